"""The README's quick start runs as written (in a temporary directory, on the packaged default model)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_quick_start_runs(tmp_path):
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "l2m_sdk.generate" in code
    code += "\nassert traj.shape == (30, 64, 2) and many.shape == (2, 60, 16, 2), (traj.shape, many.shape)\n"
    code += (
        "assert img.shape == (224, 224, 3) and idx.shape == (5,) and (tmp / 'ball.gif').stat().st_size > 0\n"
    )
    script = tmp_path / "quick_start.py"
    script.write_text("from pathlib import Path\ntmp = Path.cwd()\n" + code)
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
