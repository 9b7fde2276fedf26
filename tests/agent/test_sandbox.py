"""Tests for llmsys.agent.sandbox: real subprocesses attacking each layer of the sandbox.

Every run uses small limits so the whole file stays quick; escape attempts that need no
separate process are batched into one child that reports each attempt's outcome as JSON.
"""

from __future__ import annotations

import dis
import json
import os
import signal
import socket
import stat
import threading
import time
import types
from pathlib import Path

import pytest

from llmsys.agent import sandbox
from llmsys.agent.sandbox import SandboxLimits, SandboxResult, python_tool, run_python
from llmsys.agent.tools import ToolArgumentError

SMALL = SandboxLimits(cpu_seconds=2, wall_seconds=20, memory_bytes=128 * 2**20,
                      max_output_bytes=10_000, max_file_bytes=2**20)

# Runs each attempt and prints {name: outcome}; an outcome starts with "blocked" when the
# sandbox refused it, "escaped" when the attempt succeeded.
_ATTEMPT_RUNNER = """
import json
results, refused = {}, (PermissionError, ImportError)  # bound before attempts patch builtins
for name, source in ATTEMPTS.items():
    try:
        exec(source, dict(globals(), __name__="attempt"))
        results[name] = "escaped"
    except refused as e:
        results[name] = str(e)
    except Exception as e:
        results[name] = f"other error: {type(e).__name__}: {e}"
print(json.dumps(results))
"""


def run_attempts(attempts: dict[str, str], prelude: str = "",
                 scratch_dir: Path | None = None) -> dict[str, str]:
    code = f"{prelude}\nATTEMPTS = {attempts!r}\n{_ATTEMPT_RUNNER}"
    result = run_python(code, SMALL, scratch_dir)
    assert result.exit_code == 0, result.observation()
    return json.loads(result.stdout)


def assert_all_blocked(results: dict[str, str]) -> None:
    escaped = {name: outcome for name, outcome in results.items()
               if not outcome.startswith("blocked")}
    assert not escaped, escaped


# ----------------------------------------------------------------------------- basics

def test_print_runs_and_returns_output() -> None:
    result = run_python("print(1+1)")
    assert (result.stdout, result.stderr, result.exit_code) == ("2\n", "", 0)
    assert result.error is None and not result.timed_out and not result.truncated
    assert result.observation() == "2"


def test_exception_gives_user_traceback_and_nonzero_exit() -> None:
    result = run_python("def f():\n    return 1 / 0\n\nf()", SMALL)
    assert result.exit_code == 1 and result.error is None
    assert 'File "<agent>", line 4, in <module>' in result.stderr
    assert "return 1 / 0" in result.stderr  # the user's source lines are shown
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "sandbox.py" not in result.stderr and '"<string>"' not in result.stderr
    assert result.observation().endswith("[exit code 1]")


def test_syntax_error_is_reported_without_sandbox_frames() -> None:
    result = run_python("print(", SMALL)
    assert result.exit_code == 1
    assert result.stderr.startswith('  File "<agent>", line 1')
    assert "SyntaxError" in result.stderr and "Traceback" not in result.stderr


def test_temporary_scratch_is_cwd_home_and_tmpdir_and_is_deleted() -> None:
    code = ("import os\nprint(os.getcwd())\n"
            "print(os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR'])\n"
            "try:\n    input()\nexcept EOFError:\n    print('stdin closed')")
    result = run_python(code, SMALL)
    cwd, same, stdin = result.stdout.splitlines()
    assert (same, stdin) == ("True", "stdin closed")
    assert not Path(cwd).exists()


def test_scratch_dir_files_persist_between_runs(tmp_path: Path) -> None:
    scratch = tmp_path / "work"
    first = run_python("open('data.txt', 'w').write('kept')\n"
                       "open('helper.py', 'w').write('VALUE = 42')\n"
                       "import os\nprint(os.getcwd())", SMALL, scratch_dir=scratch)
    assert first.stdout.strip() == str(scratch.resolve())
    assert (scratch / "data.txt").read_text() == "kept"
    second = run_python("print(open('data.txt').read())\nimport helper\nprint(helper.VALUE)",
                        SMALL, scratch_dir=str(scratch))
    assert second.stdout == "kept\n42\n", second.observation()


def test_ordinary_libraries_still_work() -> None:
    code = """
import asyncio, atexit, os, shutil, socket, tempfile, threading
async def main():
    await asyncio.sleep(0)
    return "async"
print(asyncio.run(main()))
os.makedirs("tree/a/b")
open("tree/a/b/f.txt", "w").close()
shutil.rmtree("tree")
print("rmtree", os.path.exists("tree"))
with tempfile.TemporaryDirectory() as d:
    open(os.path.join(d, "x"), "w").write("1")
print("tempdir", os.path.exists(d))
a, b = socket.socketpair()
a.sendall(b"pair")
print(b.recv(4).decode())
atexit.register(print, "atexit")
threading.Thread(target=print, args=("thread",)).start()
"""
    result = run_python(code, SMALL)
    assert result.exit_code == 0, result.observation()
    assert result.stdout.splitlines() == ["async", "rmtree False", "tempdir False", "pair",
                                          "thread", "atexit"]


# ----------------------------------------------------------------------------- limits

def test_infinite_loop_ends_by_cpu_limit() -> None:
    # RLIMIT_CPU counts whole CPU seconds: on a busy machine this takes a few seconds
    result = run_python("while True: pass", SandboxLimits(cpu_seconds=1, wall_seconds=30))
    assert result.error == "cpu time limit (1 s) exceeded"
    assert result.exit_code == -signal.SIGXCPU and not result.timed_out


def test_sleep_ends_by_wall_clock() -> None:
    result = run_python("import time\ntime.sleep(100)", SandboxLimits(wall_seconds=1))
    assert result.timed_out and result.error == "wall-clock timeout (1 s)"
    assert result.exit_code == -signal.SIGKILL
    assert result.duration_s < 5
    assert result.observation().endswith("Error: wall-clock timeout (1 s)")


@pytest.mark.parametrize("code", ["x = bytearray(10**10)",
                                  "x = []\nwhile True:\n    x.append(bytearray(10**6))"],
                         ids=["one-huge-allocation", "growing-list"])
def test_memory_bomb_ends_with_memory_error(code: str) -> None:
    result = run_python(code, SMALL)
    assert result.error == "memory limit (128 MiB) exceeded"
    assert result.stderr.rstrip().endswith("MemoryError")


def test_huge_output_is_cut_at_the_cap_quickly() -> None:
    start = time.monotonic()
    result = run_python("while True:\n    print('x' * 1000)", SMALL)
    assert time.monotonic() - start < 10
    assert result.truncated and result.error == "output limit (10000 bytes) exceeded"
    assert len(result.stdout.encode()) + len(result.stderr.encode()) <= 10_000
    assert result.stdout.startswith("x" * 1000 + "\n")  # what came before the cut is kept
    observation = result.observation(10_000)
    assert len(observation) <= 10_000 + 200
    assert observation.endswith("Error: output limit (10000 bytes) exceeded")


def test_file_bigger_than_max_file_bytes_fails(tmp_path: Path) -> None:
    result = run_python("open('big', 'wb').write(b'x' * (2 * 2**20))", SMALL,
                        scratch_dir=tmp_path)
    assert result.error == "file size limit (1 MiB) exceeded"
    assert (tmp_path / "big").stat().st_size <= 2**20


@pytest.mark.parametrize(("field", "value"), [
    ("cpu_seconds", 0), ("cpu_seconds", -1.5), ("wall_seconds", float("inf")),
    ("wall_seconds", "20"), ("memory_bytes", 0), ("memory_bytes", 1.5e9),
    ("memory_bytes", 2**20), ("max_output_bytes", -5), ("max_file_bytes", True),
    ("allow_network", "yes"),
])
def test_bad_limits_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"SandboxLimits.{field} must be"):
        SandboxLimits(**{field: value})


# ----------------------------------------------------------------------------- processes

@pytest.mark.parametrize(("code", "event"), [
    ("import os\nwhile True:\n    os.fork()", "os.fork"),
    ("import subprocess\nsubprocess.run(['ls'])", "subprocess.Popen"),
    ("import os\nos.system('ls')", "os.system"),
], ids=["fork-bomb", "subprocess", "os.system"])
def test_process_creation_is_blocked(code: str, event: str) -> None:
    result = run_python(code, SMALL)
    assert result.error == f"blocked: process creation ({event})"
    assert result.exit_code == 1 and result.stdout == ""


def test_interrupted_caller_kills_and_reaps_the_child(tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    def interrupt_once_started() -> None:
        deadline = time.monotonic() + 20
        while not (tmp_path / "pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    code = ("import os, time\nopen('pid.tmp', 'w').write(str(os.getpid()))\n"
            "os.rename('pid.tmp', 'pid')\ntime.sleep(60)")
    previous = signal.signal(signal.SIGUSR1, interrupt)
    sender = threading.Thread(target=interrupt_once_started)
    sender.start()
    try:
        with pytest.raises(Interrupted):
            run_python(code, SandboxLimits(wall_seconds=30), scratch_dir=tmp_path)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR1, previous)
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int((tmp_path / "pid").read_text()), 0)


# Provokes a refusal, then tries to rewrite every function found in the locals of the
# traceback's frames (the guard's own frames included).
_FRAME_ATTACK = """
import os
try:
    open(os.path.dirname(os.getcwd()) + "/escaped.txt", "w")
except PermissionError as error:
    tb = error.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if type(value) is type(os.getcwd.__call__) or not callable(value):
                continue
            if hasattr(value, "__code__"):
                value.{attribute} = {value}
        tb = tb.tb_next
open(os.path.dirname(os.getcwd()) + "/escaped.txt", "w")
"""


def test_interpreter_level_escapes_are_blocked(tmp_path: Path) -> None:
    attempts = {
        "posix_spawn": "import os, sys\nos.posix_spawn(sys.executable, [sys.executable], {})",
        "execv": "import os, sys\nos.execv(sys.executable, [sys.executable])",
        "pty": "import pty, sys\npty.spawn(sys.executable)",
        "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=id).start()",
        "fork_exec": "import _posixsubprocess\n_posixsubprocess.fork_exec(*[None] * 23)",
        "recreate_fork_exec": "import _imp, _posixsubprocess as p\n_imp.create_dynamic(p.__spec__)",
        "kill_parent": "import os\nos.kill(os.getppid(), 0)",
        "pidfd_kill_parent": "import os, signal\n"
                             "signal.pidfd_send_signal(os.pidfd_open(os.getppid()), 0)",
        "recreate_signal": "import _imp, sys\n_imp.create_builtin(sys.modules['_signal'].__spec__)",
        "raise_limits": "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (99, 99))",
        "ctypes": "import ctypes",
        "gc_objects": "import gc\ngc.get_objects()",
        "settrace": "import sys\nsys.settrace(lambda *args: None)",
        "swap_hook_code": "import sys\nm = sys.modules['llmsys_sandbox_child']\n"
                          "m._audit.__code__ = (lambda *a, **k: None).__code__",
        "guard_defaults_from_frames": _FRAME_ATTACK.format(attribute="__defaults__",
                                                           value="(Warning, '/', '/')"),
        "guard_code_from_frames": _FRAME_ATTACK.format(attribute="__code__",
                                                       value="(lambda *a: None).__code__"),
        "guard_defaults_deleted": _FRAME_ATTACK.replace("value.{attribute} = {value}",
                                                        "del value.__defaults__"),
        "memfd_extension": "import os, _imp, _posixsubprocess, importlib.machinery as m\n"
                           "fd = os.memfd_create('x')\n"
                           "os.write(fd, open(_posixsubprocess.__file__, 'rb').read())\n"
                           "path = f'/proc/self/fd/{fd}'\n"
                           "_imp.create_dynamic(m.ModuleSpec('evil', "
                           "m.ExtensionFileLoader('evil', path), origin=path))",
        "device": "import os, stat\nfolder = os.path.dirname(os.devnull)\n"
                  "device = next(e.path for e in os.scandir(folder) if e.name not in "
                  "('null', 'zero', 'full', 'random', 'urandom') and not e.is_symlink() and "
                  "stat.S_ISCHR(os.stat(e.path).st_mode))\nopen(device, 'rb')",
    }
    results = run_attempts(attempts, scratch_dir=tmp_path / "scratch")
    assert_all_blocked(results)
    for name in ("guard_defaults_from_frames", "guard_code_from_frames",
                 "guard_defaults_deleted", "swap_hook_code"):
        assert results[name] == "blocked: changing the sandbox's own code"
    assert not (tmp_path / "escaped.txt").exists()


# ----------------------------------------------------------------------------- environment

def test_parent_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-value-8d1f"
    monkeypatch.setenv("LLMSYS_TEST_SECRET", secret)
    prelude = ("import os, json\n"
               "print(json.dumps({'visible': 'LLMSYS_TEST_SECRET' in os.environ, "
               "'keys': sorted(os.environ)}))")
    ppid = "os.getppid()"
    attempts = {
        "parent_environ": f"import os\nprint(open(f'/proc/{{{ppid}}}/environ').read())",
        "parent_cmdline": f"import os\nprint(open(f'/proc/{{{ppid}}}/cmdline').read())",
        "init_environ": "print(open('/proc/1/environ', 'rb').read())",
        "via_root_link": f"import os\nprint(open(f'/proc/self/root/proc/{{{ppid}}}/environ')"
                         ".read())",
        "via_symlink": f"import os\nos.symlink(f'/proc/{{{ppid}}}/environ', 'e')\n"
                       "print(open('e').read())",
        "via_chdir": f"import os\nos.chdir('/proc')\nprint(open(f'{{{ppid}}}/environ').read())",
        "parent_fd": f"import os\nprint(open(f'/proc/{{{ppid}}}/fd/0').read())",
    }
    result = run_python(f"{prelude}\nATTEMPTS = {attempts!r}\n{_ATTEMPT_RUNNER}", SMALL)
    assert secret not in result.stdout + result.stderr
    seen, outcomes = (json.loads(line) for line in result.stdout.splitlines())
    assert seen["visible"] is False
    assert set(seen["keys"]) <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONIOENCODING",
                                 "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}
    assert_all_blocked(outcomes)


def test_network_is_blocked_and_no_connection_arrives() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        port = server.getsockname()[1]
        attempts = {
            "create_connection": f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
            "raw_socket": f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
            "udp": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
            "dns": "import socket\nsocket.getaddrinfo('localhost', 80)",
            "unix_connect": "import socket\nsocket.socket(socket.AF_UNIX).connect('x.sock')",
        }
        assert_all_blocked(run_attempts(attempts))
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()


def test_network_can_be_allowed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(20)
        code = ("import socket\n"
                f"with socket.create_connection(('127.0.0.1', {server.getsockname()[1]})) as s:\n"
                "    s.sendall(b'hi')")
        result = run_python(code, SandboxLimits(allow_network=True))
        assert result.exit_code == 0, result.observation()
        connection, _ = server.accept()
        with connection:
            assert connection.recv(2) == b"hi"


# ----------------------------------------------------------------------------- files

def test_writes_outside_the_scratch_dir_are_blocked(tmp_path: Path) -> None:
    scratch, outside = tmp_path / "scratch", tmp_path / "outside.txt"
    existing = tmp_path / "existing.txt"
    existing.write_text("original")
    existing.chmod(0o644)
    attempts = {
        "open_w": "open(OUT, 'w').write('x')",
        "open_a": "open(OUT, 'a')",
        "relative": "open('../outside.txt', 'w')",
        "pathlib": "import pathlib\npathlib.Path(OUT).write_text('x')",
        "os_open": "import os\nos.open(OUT, os.O_WRONLY | os.O_CREAT)",
        "symlink_escape": "import os\nos.symlink(OUT, 'link')\nopen('link', 'w').write('x')",
        "rename_out": "import os\nopen('tmp', 'w').close()\nos.rename('tmp', OUT)",
        "hardlink_in": "import os\nos.link(EXISTING, 'hard')",
        "remove": "import os\nos.remove(EXISTING)",
        "chmod": "import os\nos.chmod(EXISTING, 0o777)",
        "chmod_fd": "import os\nos.chmod(os.open(EXISTING, os.O_RDONLY), 0o777)",
        "mkdir": "import os\nos.mkdir(OUT + '.d')",
        "dir_fd": "import os\nd = os.open(os.path.dirname(OUT), os.O_RDONLY)\n"
                  "os.open('outside.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d)",
        "sqlite": "import sqlite3\nsqlite3.connect(OUT)",
        "shifty_pathlike": "class P:\n    n = 0\n    def __fspath__(self):\n        P.n += 1\n"
                           "        return OUT if P.n == 1 else 'fine.txt'\nopen(P(), 'w')",
        "patched_helpers": "import os, sys, builtins\n"
                           "os.path.realpath = lambda p, **k: os.getcwd() + '/fine.txt'\n"
                           "m = sys.modules['llmsys_sandbox_child']\n"
                           "m._resolve = m._require_scratch = lambda *a: None\n"
                           "builtins.PermissionError = Warning\n"
                           "os.lstat = os.stat = os.readlink = None\n"
                           "open(OUT, 'w')",
    }
    prelude = (f"OUT, EXISTING = {str(outside)!r}, {str(existing)!r}\n"
               "open('inside.txt', 'w').write('kept')")
    results = run_attempts(attempts, prelude, scratch_dir=scratch)
    assert_all_blocked(results)
    assert results["open_w"].startswith("blocked: writing outside the scratch directory")
    assert not outside.exists() and not (tmp_path / "outside.txt.d").exists()
    assert existing.read_text() == "original"
    assert stat.S_IMODE(existing.stat().st_mode) == 0o644
    assert (scratch / "inside.txt").read_text() == "kept"


# ----------------------------------------------------------------------------- the guard

def _immutable(value: object) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_immutable(item) for item in value)
    return type(value) in (str, int, bool, types.BuiltinFunctionType, types.FunctionType,
                           types.CodeType) or isinstance(value, type)


def test_guard_functions_read_only_their_bound_parameters() -> None:
    bound = sandbox._bind_guard(os.getcwd(), allow_network=False)
    assert set(bound) >= {"audit", "check_open", "resolve", "require_scratch"}
    for name, function in bound.items():
        lookups = [i.argval for i in dis.get_instructions(function)
                   if i.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "STORE_GLOBAL")]
        assert not lookups, (name, lookups)
        assert function.__closure__ is None and function.__kwdefaults__ is None
        assert all(value is not None and _immutable(value) for value in function.__defaults__)


def test_resolve_follows_symlinks_and_refuses_other_processes(tmp_path: Path) -> None:
    resolve = sandbox._bind_guard(str(tmp_path), allow_network=False)["resolve"]
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "up").symlink_to("..")
    path = str(tmp_path / "link" / "up" / "link" / "file")
    assert resolve(path, True) == os.path.realpath(path)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert resolve(str(dangling), False) == str(dangling)
    assert resolve(str(dangling), True) == str(tmp_path / "nowhere")
    assert resolve("/proc/self/status", True) == f"/proc/{os.getpid()}/status"
    with pytest.raises(PermissionError, match="another process"):
        resolve(f"/proc/{os.getppid()}/environ", True)


# ----------------------------------------------------------------------------- tool, output

def test_python_tool_schema_and_run() -> None:
    tool = python_tool(SandboxLimits(cpu_seconds=5), requires_approval=True)
    assert tool.name == "python" and tool.requires_approval
    parameters = tool.spec()["function"]["parameters"]
    assert parameters["required"] == ["code"]
    assert parameters["properties"]["code"]["type"] == "string"
    for bad in ({}, {"code": 3}, {"code": "print(1)", "extra": 1}):
        with pytest.raises(ToolArgumentError):
            tool.validate(bad)
    assert "3" in python_tool().run({"code": "print(3)"})
    blocked = python_tool(SMALL).run('{"code": "import os\\nos.system(\'ls\')"}')
    assert blocked.endswith("Error: blocked: process creation (os.system)")


def test_observation_formatting() -> None:
    assert SandboxResult("", "", 0).observation() == "(no output)"
    assert SandboxResult("", "", 3).observation() == "[exit code 3]"
    result = SandboxResult("a" * 100, "boom", 1, error="cpu time limit (1 s) exceeded")
    text = result.observation(max_chars=50)
    assert text.startswith("a" * 50) and "more characters cut" in text
    assert text.endswith("\nError: cpu time limit (1 s) exceeded") and len(text) < 120
    both = SandboxResult("out\n", "err\n", 0).observation()
    assert both == "out\n[stderr]\nerr"
