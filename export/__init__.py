"""Training and export side of l2m (PyTorch, open_clip). Never imported by l2m_sdk."""
