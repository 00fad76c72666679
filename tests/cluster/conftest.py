"""A real single-node SLURM for the cluster tier: munged, slurmctld and slurmd started from a
slurm.conf in a temporary folder (no systemd, no cgroups, no accounting database), stopped by
pid at the end. Skips cleanly where the Debian packages `slurmctld slurmd slurm-client munge`
are not installed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "squeue", "scontrol", "sbatch", "srun", "scancel")


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _real_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


@dataclass
class SlurmCluster:
    """The running cluster: its folder, the environment its clients need, and helpers."""

    root: Path
    env: dict[str, str]
    node: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=check)

    def job_field(self, job_id: str, name: str) -> str:
        shown = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        for field in shown.split():
            if field.startswith(f"{name}="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def job_state(self, job_id: str) -> str:
        return self.job_field(job_id, "JobState")

    def wait_for_state(self, job_id: str, states: set[str], timeout: float) -> str:
        """Poll until the job reaches one of `states`; returns it (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(1)
        raise AssertionError(f"job {job_id} still {self.job_state(job_id)} after {timeout:.0f} s")


def _slurm_conf(root: Path, node: str, munge_socket: Path) -> str:
    return f"""\
ClusterName=qaexp
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=30
MinJobAge=3600
SchedulerParameters=defer_batch
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory={_real_memory_mb() - 512} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_until_idle(cluster: SlurmCluster, daemons: list, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p.args[0] for p in daemons if p.poll() is not None]
        if dead:
            break
        state = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    logs = "".join(
        f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(cluster.root.glob("*.log"))
    )
    raise RuntimeError(f"the test SLURM did not come up (node not idle){logs}")


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in reversed(processes):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> SlurmCluster:
    """A single-node SLURM (2 CPUs) running for the whole session; client commands reach it
    through `cluster.env` (SLURM_CONF, and a `sacct` stand-in first on PATH)."""
    missing = [p for p in (*DAEMONS, *CLIENTS) if _find(p) is None]
    if missing:
        pytest.skip(f"SLURM is not installed (missing {', '.join(missing)}); see .ci/run")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM runs its daemons as root")
    root = tmp_path_factory.mktemp("slurm", numbered=True)
    for folder in ("state", "spool", "bin"):
        (root / folder).mkdir()
    node = socket.gethostname().split(".")[0]
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "munge.socket"
    (root / "slurm.conf").write_text(_slurm_conf(root, node, munge_socket))
    shutil.copy(HERE / "sacct", root / "bin" / "sacct")
    env = {
        **os.environ,
        "SLURM_CONF": str(root / "slurm.conf"),
        "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    cluster = SlurmCluster(root=root, env=env, node=node)
    processes: list[subprocess.Popen] = []
    try:
        munged = [_find("munged"), "--foreground", "--force", f"--socket={munge_socket}"]
        munged += [f"--key-file={key}", f"--pid-file={root / 'munged.pid'}"]
        munged += [f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munged.seed'}"]
        processes.append(_start(munged, env, root / "munged.out"))
        time.sleep(1)
        processes.append(_start([_find("slurmctld"), "-D", "-i"], env, root / "slurmctld.out"))
        processes.append(_start([_find("slurmd"), "-D", "-N", node], env, root / "slurmd.out"))
        _wait_until_idle(cluster, processes)
        yield cluster
    finally:
        if processes:
            cluster.run("scancel", "--full", "--user=root", check=False)
        _stop(processes)
