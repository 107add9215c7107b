"""A MuJoCo control loop: a planar two-link arm whose end effector tracks paths that l2m generates.

    pip install mujoco
    python examples/robot_loop.py                      # prints the tracking error
    python examples/robot_loop.py --segments 4 --json stats.json

The arm (shoulder and elbow hinges about z, links 0.30 m and 0.25 m, torque motors) moves in the
horizontal plane; physics runs at 500 Hz and the controller at 100 Hz (torques held for 5 steps).

The path: every `--segment-seconds` (2 s) the loop asks the model for the motion of one point
(N = 1), starting where the end effector is now, so consecutive segments join without a jump (frame 0
of a generated trajectory equals its initial points exactly). The prompt cycles through a few motions.
Normalised image coordinates map into a 0.30 m x 0.30 m square of the workspace centred 0.32 m in
front of the shoulder: x right -> world +x, y down -> world -y (image y points down, world y up).
The T = 30 generated frames are resampled to the control rate with a Catmull-Rom spline (continuous
velocity), which also gives the reference velocity and acceleration.

The controller: inverse kinematics (elbow on one side, angles unwrapped) turns the reference into
joint angles, velocities and accelerations; computed torque, tau = inverse dynamics(q, qd, qdd_ref +
Kp e + Kd ed) (MuJoCo's mj_inverse: mass matrix, Coriolis and damping), with Kp = 400 s^-2 and
Kd = 40 s^-1 (critically damped at 20 rad/s). Generation runs between control ticks, on the control
thread; its time is reported beside the control budget of 10 ms.

Tracking error = distance between the end effector (site "ee") and the reference point at each
control tick, over the whole run.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import l2m_sdk

L1, L2 = 0.30, 0.25  # link lengths (m)
CENTRE = np.array([0.32, 0.0])  # workspace square centre (m), in front of the shoulder
HALF = 0.15  # half side of the square (m): reach stays within [0.17, 0.50] m, clear of |L1 - L2|, L1 + L2
PHYSICS_HZ, CONTROL_HZ = 500, 100
KP, KD = 400.0, 40.0
PROMPTS = [
    "a ball bouncing to the right",
    "a point circling clockwise",
    "a car driving left then turning up",
    "a bird flying in a wave to the right",
]

ARM_XML = f"""
<mujoco model="planar_arm">
  <option timestep="{1 / PHYSICS_HZ}" gravity="0 0 -9.81" integrator="implicitfast"/>
  <worldbody>
    <body name="upper">
      <joint name="shoulder" type="hinge" axis="0 0 1" damping="0.05"/>
      <geom type="capsule" fromto="0 0 0 {L1} 0 0" size="0.02" mass="1.0"/>
      <body name="fore" pos="{L1} 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" damping="0.05"/>
        <geom type="capsule" fromto="0 0 0 {L2} 0 0" size="0.015" mass="0.6"/>
        <site name="ee" pos="{L2} 0 0"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor joint="shoulder" ctrllimited="true" ctrlrange="-50 50"/>
    <motor joint="elbow" ctrllimited="true" ctrlrange="-50 50"/>
  </actuator>
</mujoco>
"""


def image_to_world(xy: np.ndarray) -> np.ndarray:
    """(..., 2) normalised image coordinates (y down) -> (..., 2) metres in the arm's plane (y up)."""
    xy = np.clip(xy, -1.0, 1.0)
    return CENTRE + HALF * np.stack([xy[..., 0], -xy[..., 1]], -1)


def world_to_image(p: np.ndarray) -> np.ndarray:
    d = (p - CENTRE) / HALF
    return np.stack([d[..., 0], -d[..., 1]], -1)


def catmull_rom(keys: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keyframes (K, 2) spread evenly over a segment, evaluated at segment fractions sigma (M,) in [0, 1]:
    position, and its first and second derivatives with respect to sigma, each (M, 2)."""
    K = len(keys)
    pad = np.concatenate([2 * keys[:1] - keys[1:2], keys, 2 * keys[-1:] - keys[-2:-1]])
    u = sigma * (K - 1)
    i = np.minimum(u.astype(int), K - 2)
    t = (u - i)[:, None]
    p0, p1, p2, p3 = pad[i], pad[i + 1], pad[i + 2], pad[i + 3]
    b = p2 - p0
    c = 2 * p0 - 5 * p1 + 4 * p2 - p3
    d = 3 * (p1 - p2) + p3 - p0
    pos = p1 + 0.5 * (b * t + c * t**2 + d * t**3)
    vel = 0.5 * (b + 2 * c * t + 3 * d * t**2) * (K - 1)
    acc = 0.5 * (2 * c + 6 * d * t) * (K - 1) ** 2
    return pos, vel, acc


def segment_reference(keys: np.ndarray, seconds: float, ticks: int) -> tuple[np.ndarray, ...]:
    """Position, velocity and acceleration (each (ticks + 1, 2), SI units) along the keyframes, timed by a
    smoothstep so that every segment starts and ends at rest: consecutive segments (and the arm at rest)
    join with continuous velocity, whatever direction the next generated path takes."""
    tau = np.linspace(0.0, 1.0, ticks + 1)
    sigma = tau * tau * (3 - 2 * tau)
    ds, dds = 6 * tau * (1 - tau) / seconds, (6 - 12 * tau) / seconds**2
    p, dp, ddp = catmull_rom(keys, sigma)
    return p, dp * ds[:, None], ddp * (ds**2)[:, None] + dp * dds[:, None]


def ik(p: np.ndarray) -> np.ndarray:
    """(M, 2) end-effector positions -> (M, 2) joint angles (elbow angle positive), unwrapped in time."""
    r2 = (p**2).sum(-1)
    c2 = np.clip((r2 - L1**2 - L2**2) / (2 * L1 * L2), -1.0, 1.0)
    q2 = np.arccos(c2)
    q1 = np.arctan2(p[:, 1], p[:, 0]) - np.arctan2(L2 * np.sin(q2), L1 + L2 * np.cos(q2))
    return np.stack([np.unwrap(q1), q2], -1)


def joint_reference(pos: np.ndarray, vel: np.ndarray, acc: np.ndarray) -> tuple:
    """Task-space reference -> joint angles, velocities (J^-1 v) and accelerations (J^-1 (a - Jdot qd))."""
    q = ik(pos)
    s1, c1 = np.sin(q[:, 0]), np.cos(q[:, 0])
    s12, c12 = np.sin(q.sum(1)), np.cos(q.sum(1))
    J = np.empty((len(q), 2, 2))
    J[:, 0, 0], J[:, 0, 1] = -L1 * s1 - L2 * s12, -L2 * s12
    J[:, 1, 0], J[:, 1, 1] = L1 * c1 + L2 * c12, L2 * c12
    qd = np.linalg.solve(J, vel[..., None])[..., 0]
    w1, w12 = qd[:, 0], qd.sum(1)
    jdot_qd = np.stack(
        [-L1 * c1 * w1**2 - L2 * c12 * w12**2, -L1 * s1 * w1**2 - L2 * s12 * w12**2], -1
    )  # d/dt (J) qd, the centripetal part of the end effector's acceleration
    qdd = np.linalg.solve(J, (acc - jdot_qd)[..., None])[..., 0]
    return q, qd, qdd


class Arm:
    """The simulated arm and its controller."""

    def __init__(self):
        import mujoco

        self.mj = mujoco
        self.model = mujoco.MjModel.from_xml_string(ARM_XML)
        self.data = mujoco.MjData(self.model)
        self.ee = self.model.site("ee").id
        self.data.qpos[:] = ik(CENTRE[None])[0]  # at rest, the end effector on the square's centre
        mujoco.mj_forward(self.model, self.data)

    def ee_xy(self) -> np.ndarray:
        return self.data.site_xpos[self.ee][:2].copy()

    def follow(self, keys: np.ndarray, seconds: float) -> tuple[list[float], list, list[float]]:
        """Track keyframes (K, 2) metres spread over `seconds` at the control rate. Returns the tracking
        error (m) after each tick, the reference point of each tick and each tick's compute time (ms)."""
        mj, model, data = self.mj, self.model, self.data
        ticks = int(round(seconds * CONTROL_HZ))
        pos, vel, acc = segment_reference(keys, seconds, ticks)
        q_ref, qd_ref, qdd_ref = joint_reference(pos, vel, acc)
        q_ref[:, 0] += 2 * np.pi * np.round((data.qpos[0] - q_ref[0, 0]) / (2 * np.pi))  # no 2 pi jumps
        errors, targets, tick_ms = [], [], []
        for k in range(ticks):
            t0 = time.perf_counter()
            e = q_ref[k] - data.qpos
            ed = qd_ref[k] - data.qvel
            data.qacc[:] = qdd_ref[k] + KP * e + KD * ed
            mj.mj_inverse(model, data)  # the torque for that acceleration in the current state
            data.ctrl[:] = data.qfrc_inverse
            for _ in range(PHYSICS_HZ // CONTROL_HZ):
                mj.mj_step(model, data)
            tick_ms.append(1e3 * (time.perf_counter() - t0))
            errors.append(float(np.linalg.norm(self.ee_xy() - pos[k + 1])))  # reference one tick on
            targets.append(pos[k + 1])
        return errors, targets, tick_ms


def run(segments: int, segment_seconds: float, seed: int) -> dict:
    arm = Arm()
    sdk = l2m_sdk.load("default", threads=1)
    rng = np.random.default_rng(seed)
    errors, targets, tick_ms, gen_ms = [], [], [], []
    for s in range(segments):
        # Between control ticks: the next path, one point starting where the end effector is now.
        t0 = time.perf_counter()
        here = world_to_image(arm.ee_xy())
        traj = sdk.generate(PROMPTS[s % len(PROMPTS)], here[None], 30, int(rng.integers(1 << 31)), 0.3)
        gen_ms.append(1e3 * (time.perf_counter() - t0))
        keys = image_to_world(traj[:, 0])  # (30, 2) metres; keys[0] is the end effector now
        e, t, ms = arm.follow(keys, segment_seconds)
        errors += e
        targets += t
        tick_ms += ms
    sdk.close()
    err = np.array(errors) * 1e3  # mm
    steps = np.linalg.norm(np.diff(np.array(targets), axis=0), axis=1)
    return {
        "segments": segments,
        "control_ticks": len(errors),
        "physics_hz": PHYSICS_HZ,
        "control_hz": CONTROL_HZ,
        "tracking_error_mm": {
            "rms": float(np.sqrt((err**2).mean())),
            "p99": float(np.percentile(err, 99)),
            "max": float(err.max()),
        },
        "path_length_m": float(steps.sum()),
        "peak_speed_m_s": float(steps.max() * CONTROL_HZ),
        "control_tick_ms": {"p50": float(np.median(tick_ms)), "p99": float(np.percentile(tick_ms, 99))},
        "generation_ms": {"p50": float(np.median(gen_ms)), "max": float(max(gen_ms))},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--segment-seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int(time.time())
    stats = run(a.segments, a.segment_seconds, seed)
    e = stats["tracking_error_mm"]
    print(
        f"{stats['control_ticks']} control ticks at {CONTROL_HZ} Hz (physics {PHYSICS_HZ} Hz), path "
        f"{stats['path_length_m']:.2f} m, peak speed {stats['peak_speed_m_s']:.2f} m/s: tracking error "
        f"rms {e['rms']:.2f} mm, p99 {e['p99']:.2f} mm, max {e['max']:.2f} mm (seed {seed})"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(stats, f)


if __name__ == "__main__":
    main()
