"""The suite-wide guard in conftest.py: a test that leaves a process or a listening port behind
errors, and the process is killed."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def test_a_process_left_running_is_an_error_and_gets_killed(pytester):
    pytester.makeconftest(CONFTEST)
    pidfile = pytester.path / "pid.txt"
    pytester.makepyfile(
        f"""
        import subprocess, sys

        def test_leaks(tmp_path):
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                    cwd=tmp_path)
            open({str(pidfile)!r}, "w").write(str(proc.pid))

        def test_clean(tmp_path):
            subprocess.run([sys.executable, "-c", "pass"], cwd=tmp_path, check=True)
        """
    )
    began = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*process left running (pid *time.sleep(120)*"])
    pid = int(pidfile.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - began < 90  # killed, not waited for


def test_a_port_left_listening_is_an_error(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import socket

        SOCKETS = []

        def test_leaks_a_port():
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            SOCKETS.append(server)

        def test_closes_its_port():
            with socket.socket() as server:
                server.bind(("127.0.0.1", 0))
                server.listen()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*port left listening: 127.0.0.1:*"])


def test_a_reparented_worker_is_found_in_tests_that_start_processes(pytester):
    """A worker whose launcher already exited is no child of pytest any more: tests marked
    `processes` (and those using run_qaexp) scan the host for processes in their folders."""
    pytester.makeconftest(CONFTEST)
    pidfile = pytester.path / "pid.txt"
    pytester.makepyfile(
        f"""
        import subprocess, sys, time
        import pytest

        LAUNCHER = (
            "import subprocess, sys; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "open({str(pidfile)!r}, 'w').write(str(p.pid))"
        )

        @pytest.mark.processes
        def test_leaks_a_grandchild(tmp_path):
            subprocess.run([sys.executable, "-c", LAUNCHER], cwd=tmp_path, check=True)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*process left running (pid *time.sleep(120)*"])
    pid = int(pidfile.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
