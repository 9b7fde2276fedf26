"""The agent's `python` tool: run model-written Python code in a subprocess with limits.

    result = run_python("print(1 + 1)")                 # SandboxResult(stdout="2\\n", ...)
    result = run_python(code, SandboxLimits(cpu_seconds=2, wall_seconds=5))
    tool = python_tool(scratch_dir="work")               # a Tool named "python"
    tool.run({"code": "print(3)"})                       # -> "3"

Each run starts a fresh interpreter (`sys.executable -I`, its own session and process group,
stdin at /dev/null) whose working directory, HOME and TMPDIR are a scratch directory: a new
temporary one, deleted afterwards, or `scratch_dir`, whose files persist between runs (it is
also last on sys.path, so modules the code wrote can be imported). Linux only. The defences
are layered:

1. Process: the child is killed as a whole process group (SIGKILL) on the wall-clock
   timeout, when its combined output passes `max_output_bytes`, or when the caller is
   interrupted; it is always reaped.
2. Environment: a minimal fresh environment (PATH, LANG, HOME, TMPDIR, PYTHONIOENCODING,
   thread caps); nothing of the parent's environment is inherited.
3. Resource limits (set in the child before user code): CPU seconds (RLIMIT_CPU, rounded up
   to whole seconds), address space (RLIMIT_AS), size of any written file (RLIMIT_FSIZE),
   open files, no core dumps.
4. An audit hook (PEP 578) installed before user code raises PermissionError ("blocked: ...")
   for: creating processes (fork, exec, spawn, system, subprocess, pty); network access unless
   `allow_network` (Unix socket pairs stay possible, so asyncio works); ctypes/cffi and
   native extension modules from outside the Python installation; opening another process's
   /proc/<pid>/ entries, directories, or devices other than null/zero/full/(u)random;
   writing, creating, renaming, deleting, chmod-ing anything outside the scratch directory
   (and /dev/null); signalling other processes; changing resource limits; what could
   switch the hook off (gc object enumeration, settrace/setprofile, replacing the hook's own
   `__code__` or `__defaults__`). The dangerous C functions that raise no audit event
   (`_posixsubprocess.fork_exec`, `signal.pidfd_send_signal`, `os.mknod`, `os.mkfifo`,
   `_imp.create_builtin`) are replaced by stubs. The hook never looks up a global or builtin
   name (its dependencies are bound as default arguments when the child starts), so patching
   `os`, `builtins` or this module from user code does not change it.
5. The parent reads stdout and stderr concurrently with a byte cap and names the cause of
   death in `SandboxResult.error`: "cpu time limit (10 s) exceeded", "wall-clock timeout
   (20 s)", "memory limit (512 MiB) exceeded", "output limit (64 KiB) exceeded", "file size
   limit (16 MiB) exceeded", "blocked: process creation (os.fork)", ...

What it does not protect against -- it is not a VM or a container:

- Reads: any file the agent's user may read can be read (for an agent running as root that
  is nearly everything, e.g. SSH keys), and listed; only /proc/<other pid>/ and devices are
  refused. Resource usage of the machine is visible.
- Audit hooks are documented by CPython as not being a security boundary: native code
  gets past them, and so can interpreter bugs and crafted bytecode (`marshal`,
  `code.replace`) that corrupt memory. C extensions that open files or sockets themselves
  (sqlite3's ATTACH, HDF5, ...), a pathlib path whose module internals are patched to
  answer differently for the check and for the open, or a second thread swapping a symlink
  between the check and the open get past the path rules.
- Disk space: each file is capped, not their number, so the scratch disk can be filled.
- CPU time is per process and in whole seconds; memory is address space (libraries that
  reserve large virtual regions may need a larger `memory_bytes`).

For code from untrusted users, run this inside a container or VM with no network, a
read-only root file system and an unprivileged user; this sandbox is then a second layer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmsys.agent.tools import Tool

MiB = 2**20
_CODE_NAME = "<agent>"  # the file name user code gets in tracebacks


# ----------------------------------------------------------------------------- public API

@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one run. `cpu_seconds` is rounded up to whole seconds for RLIMIT_CPU."""

    cpu_seconds: float = 10
    wall_seconds: float = 20
    memory_bytes: int = 512 * MiB
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 * MiB
    allow_network: bool = False

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number of seconds, "
                                 f"got {value!r}")
        for name in ("memory_bytes", "max_output_bytes", "max_file_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive whole number of "
                                 f"bytes, got {value!r}")
        if self.memory_bytes < 64 * MiB:
            raise ValueError(f"SandboxLimits.memory_bytes must be at least 64 MiB (the "
                             f"interpreter itself needs that), got {self.memory_bytes!r}")
        if not isinstance(self.allow_network, bool):
            raise ValueError(f"SandboxLimits.allow_network must be True or False, "
                             f"got {self.allow_network!r}")


DEFAULT_LIMITS = SandboxLimits()


@dataclass
class SandboxResult:
    """What a run produced; `error` is a short reason when the sandbox stopped the code."""

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool = False
    truncated: bool = False
    error: str | None = None
    duration_s: float = 0.0

    def observation(self, max_chars: int = DEFAULT_LIMITS.max_output_bytes) -> str:
        """The run as text for a model: stdout, then stderr if any, then the error line."""
        parts = [self.stdout.rstrip("\n")] if self.stdout else []
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        text = "\n".join(parts)
        if len(text) > max_chars:
            text = text[:max_chars] + f"\n[... {len(text) - max_chars} more characters cut]"
        lines = [text] if text else []
        if self.truncated and not self.error:
            lines.append("[output truncated]")
        if self.error:
            lines.append(f"Error: {self.error}")
        elif self.exit_code not in (0, None):
            lines.append(f"[exit code {self.exit_code}]")
        return "\n".join(lines) or "(no output)"


def run_python(code: str, limits: SandboxLimits = DEFAULT_LIMITS,
               scratch_dir: str | Path | None = None) -> SandboxResult:
    """Run `code` in a sandboxed interpreter (see the module docstring) and return the result.

    The scratch directory is the working directory, HOME and TMPDIR: a fresh temporary one
    (deleted afterwards) unless `scratch_dir` is given (created if missing, kept)."""
    if scratch_dir is not None:
        scratch = Path(scratch_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        return _run_in(code, limits, os.path.realpath(scratch))
    scratch = tempfile.mkdtemp(prefix="llmsys-sandbox-")
    try:
        return _run_in(code, limits, os.path.realpath(scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def python_tool(limits: SandboxLimits = DEFAULT_LIMITS, scratch_dir: str | Path | None = None,
                requires_approval: bool = False) -> Tool:
    """The agent's `python` tool: one required string argument `code`."""
    from llmsys.agent.tools import Tool

    def python(code: str) -> str:
        try:
            return run_python(code, limits, scratch_dir).observation(limits.max_output_bytes)
        except OSError as e:
            return f"Error: could not start the Python sandbox ({e})"

    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description":
                                "Python source to run; print what you want to see"}},
        "required": ["code"],
        "additionalProperties": False,
    }
    return Tool.from_schema("python", _tool_description(limits, scratch_dir is not None),
                            parameters, python, requires_approval)


def _tool_description(limits: SandboxLimits, persistent: bool) -> str:
    files = ("files there are kept between calls" if persistent
             else "it starts empty on every call")
    network = "network allowed" if limits.allow_network else "no network"
    return (f"Run Python 3 code in a sandboxed subprocess and return what it printed (stdout, "
            f"then stderr). The working directory is a scratch directory ({files}); files "
            f"can be written only there. No subprocesses, {network}. Limits: "
            f"{limits.cpu_seconds:g} s CPU, {limits.wall_seconds:g} s wall clock, "
            f"{_size(limits.memory_bytes)} memory, {_size(limits.max_output_bytes)} output.")


# ----------------------------------------------------------------------------- parent side

# Loads this file (not the llmsys package, which imports torch) in the child and runs it.
_LAUNCHER = """\
import importlib.util, sys
spec = importlib.util.spec_from_file_location("llmsys_sandbox_child", sys.argv[1])
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module._child_main(sys.argv[2])
"""


@dataclass
class _Capture:
    """Output read so far, capped at `limit` bytes in total."""

    limit: int
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    stopped: str | None = None  # "timeout" or "output" when the parent ended the run

    def add(self, buffer: bytearray, data: bytes) -> bool:
        """Keep `data`; False (and stopped="output") once the cap is passed."""
        room = self.limit - len(self.out) - len(self.err)
        buffer += data[:room]
        if len(data) > room:
            self.stopped = "output"
            return False
        return True


def _run_in(code: str, limits: SandboxLimits, scratch: str) -> SandboxResult:
    start = time.monotonic()
    deadline = start + limits.wall_seconds
    proc = _spawn(limits, scratch)
    capture = _Capture(limits.max_output_bytes)
    try:
        _pump(proc, code.encode("utf-8", "replace"), deadline, capture)
        if capture.stopped is None and not _wait_exit(proc.pid, deadline):
            capture.stopped = "timeout"
    finally:
        exit_code, cpu_used = _kill_and_reap(proc)
    stdout = capture.out.decode("utf-8", "replace")
    stderr = capture.err.decode("utf-8", "replace")
    return SandboxResult(
        stdout=stdout, stderr=stderr, exit_code=exit_code,
        timed_out=capture.stopped == "timeout", truncated=capture.stopped == "output",
        error=_diagnose(capture.stopped, exit_code, cpu_used, stderr, limits),
        duration_s=time.monotonic() - start)


def _spawn(limits: SandboxLimits, scratch: str) -> subprocess.Popen:
    config = {"scratch": scratch, "cpu_seconds": limits.cpu_seconds,
              "memory_bytes": limits.memory_bytes, "max_file_bytes": limits.max_file_bytes,
              "allow_network": limits.allow_network}
    command = [sys.executable, "-I", "-B", "-u", "-X", "utf8", "-c", _LAUNCHER,
               os.path.abspath(__file__), json.dumps(config)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0, cwd=scratch,
                            env=_child_env(scratch), start_new_session=True, close_fds=True)


def _child_env(scratch: str) -> dict[str, str]:
    """A fresh minimal environment: nothing of the parent's is passed on."""
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "MKL_NUM_THREADS")}  # thread pools need address space
    return {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
            "HOME": scratch, "TMPDIR": scratch, **threads}


def _pump(proc: subprocess.Popen, stdin_data: bytes, deadline: float,
          capture: _Capture) -> None:
    """Feed the code to the child's stdin and read stdout/stderr until both close, the
    deadline passes (capture.stopped = "timeout") or the output cap is hit."""
    pending = memoryview(stdin_data)
    buffers = {proc.stdout: capture.out, proc.stderr: capture.err}
    with selectors.DefaultSelector() as selector:
        for stream in buffers:
            selector.register(stream, selectors.EVENT_READ)
        os.set_blocking(proc.stdin.fileno(), False)
        selector.register(proc.stdin, selectors.EVENT_WRITE)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                capture.stopped = "timeout"
                return
            for key, _ in selector.select(remaining):
                if key.fileobj is proc.stdin:
                    pending = _feed(proc.stdin, pending, selector)
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                elif not capture.add(buffers[key.fileobj], data):
                    return


def _feed(stdin: Any, pending: memoryview, selector: selectors.BaseSelector) -> memoryview:
    try:
        pending = pending[os.write(stdin.fileno(), pending[:65536]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:  # the child is gone; its exit status will tell why
        pending = pending[:0]
    if not pending:
        selector.unregister(stdin)
        stdin.close()
    return pending


def _wait_exit(pid: int, deadline: float) -> bool:
    """Wait (without reaping) until the child exits; False if the deadline passes first."""
    try:
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
    except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): it has exited
        pass
    return True


def _kill_and_reap(proc: subprocess.Popen) -> tuple[int | None, float]:
    """SIGKILL the whole process group (the unreaped leader keeps its id reserved), reap the
    leader, close the pipes. Returns (exit code, CPU seconds used)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        return None, 0.0
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _diagnose(stopped: str | None, exit_code: int | None, cpu_used: float, stderr: str,
              limits: SandboxLimits) -> str | None:
    """Why the sandbox stopped the code, or None when it ran (or failed) on its own."""
    if stopped == "timeout":
        return f"wall-clock timeout ({limits.wall_seconds:g} s)"
    if stopped == "output":
        return f"output limit ({_size(limits.max_output_bytes)}) exceeded"
    if exit_code == -signal.SIGXCPU or (exit_code == -signal.SIGKILL
                                        and cpu_used >= math.ceil(limits.cpu_seconds)):
        return f"cpu time limit ({limits.cpu_seconds:g} s) exceeded"
    last = stderr.rstrip().rpartition("\n")[2]
    if exit_code and re.match(r"[\w.]*MemoryError\b", last):
        return f"memory limit ({_size(limits.memory_bytes)}) exceeded"
    if exit_code and os.strerror(errno.EFBIG) in last:  # RLIMIT_FSIZE
        return f"file size limit ({_size(limits.max_file_bytes)}) exceeded"
    blocked = re.match(r"[\w.]+: (blocked: .+)", last)
    if exit_code and blocked:
        return blocked.group(1)
    if exit_code is not None and exit_code < 0:
        return f"killed by signal {_signal_name(-exit_code)}"
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # e.g. a real-time signal
        return str(number)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


# ----------------------------------------------------------------------------- child side
# Everything below runs in the sandboxed interpreter, loaded by _LAUNCHER.

def _child_main(config_json: str) -> None:
    """Set up the limits and the audit hook, run the code read from stdin, exit."""
    exit_now = os._exit  # bound before user code can replace it
    config = json.loads(config_json)
    code = sys.stdin.buffer.read().decode("utf-8", "replace")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _set_rlimits(config)
    _replace_unaudited_functions()
    sys.addaudithook(_bind_guard(config["scratch"], config["allow_network"])["audit"])
    sys.argv = [_CODE_NAME]
    sys.path.append(config["scratch"])  # modules the code wrote import; last: no shadowing
    status = _run_user_code(code)
    _finish_threads_and_atexit()
    exit_now(status)  # no interpreter shutdown: the hook stays active to the very end


def _set_rlimits(config: dict) -> None:
    import resource

    cpu = max(1, math.ceil(config["cpu_seconds"]))
    limits = ((resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU, then SIGKILL a second later
              (resource.RLIMIT_AS, config["memory_bytes"], config["memory_bytes"]),
              (resource.RLIMIT_FSIZE, config["max_file_bytes"], config["max_file_bytes"]),
              (resource.RLIMIT_NOFILE, 256, 256), (resource.RLIMIT_CORE, 0, 0))
    for kind, soft, hard in limits:
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
        resource.setrlimit(kind, (min(soft, hard), hard))


def _blocked_stub(*args: object) -> None:
    raise PermissionError("blocked: this function is disabled in the sandbox")


def _replace_unaudited_functions() -> None:
    """Stub out the dangerous C functions that raise no audit event. The originals live only
    in their module's dict, so they are gone; re-creating `_posixsubprocess` is refused by the
    hook, and builtin modules are all imported before `_imp.create_builtin` is stubbed."""
    import _imp
    import _posixsubprocess
    import _signal

    for name in sys.builtin_module_names:
        __import__(name)
    _posixsubprocess.fork_exec = _blocked_stub
    for module in (_signal, sys.modules.get("signal")):
        if module is not None:
            module.pidfd_send_signal = _blocked_stub
    for name in ("mknod", "mkfifo"):
        setattr(os, name, _blocked_stub)
        setattr(sys.modules["posix"], name, _blocked_stub)
    _imp.create_builtin = _blocked_stub
    shutil._use_fd_functions = False  # rmtree by path: directory descriptors are refused


def _run_user_code(code: str) -> int:
    """Run the code as __main__; print a traceback of the user's frames on error."""
    import builtins
    import linecache

    linecache.cache[_CODE_NAME] = (len(code), None, code.splitlines(True), _CODE_NAME)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(code, _CODE_NAME, "exec"), namespace)
    except SystemExit as e:
        return _exit_status(e.code)
    except BaseException as e:  # everything the code raises is reported
        if isinstance(e, MemoryError):
            namespace.clear()  # free the memory before formatting the traceback
        _print_user_traceback(e)
        return 1
    return 0


def _exit_status(code: object) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _print_user_traceback(error: BaseException) -> None:
    import traceback

    summary = traceback.TracebackException.from_exception(error)
    _drop_sandbox_frames(summary)
    sys.stderr.write("".join(summary.format()))


def _drop_sandbox_frames(summary: Any) -> None:
    """Keep the user's frames: drop the launcher's and this file's (e.g. the audit hook)."""
    import traceback

    frames = list(summary.stack)
    first = next((i for i, f in enumerate(frames) if f.filename == _CODE_NAME), len(frames))
    summary.stack = traceback.StackSummary.from_list(
        [f for f in frames[first:] if f.filename != __file__])
    for nested in (summary.__cause__, summary.__context__):
        if nested is not None:
            _drop_sandbox_frames(nested)


def _finish_threads_and_atexit() -> None:
    """What interpreter shutdown would do for the user: join threads, run atexit, flush."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# -- the audit hook. Rule: a guard function reads only its parameters. Its dependencies (C
# functions, builtin types, settings, the other guard functions) are positional defaults bound
# when the child starts (`_bind_guard`), so it never looks up a global or builtin name: user
# code can reach this module, the builtins and, through a traceback, a guard frame's locals,
# but those hold only immutable values, and replacing a guard function's __code__ or
# __defaults__ is refused. Parameters named like builtins (type, str, ...) are deliberate.

_PROCESS_EVENTS = frozenset({"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn",
                             "os.spawn", "os.startfile", "subprocess.Popen", "pty.spawn"})
_FORBIDDEN = (
    ("process creation", _PROCESS_EVENTS),
    ("changing resource limits", frozenset({"resource.setrlimit", "resource.prlimit"})),
    ("native code", frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle",
                               "ctypes.call_function", "ctypes.cdata", "ctypes.cdata/buffer",
                               "ctypes.addressof", "ctypes.PyObj_FromPtr", "ctypes.string_at",
                               "ctypes.wstring_at"})),
    ("interpreter introspection that could disable the sandbox",
     frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
                "sys.setprofile"})),
    ("device control", frozenset({"fcntl.ioctl"})),
)
# event -> ((path argument index, follow a final symlink), ...), (dir_fd argument indexes)
_PATH_EVENTS = {
    "os.mkdir": (((0, False),), (2,)), "os.remove": (((0, False),), (1,)),
    "os.rmdir": (((0, False),), (1,)), "os.rename": (((0, False), (1, False)), (2, 3)),
    "os.link": (((0, True), (1, False)), (2, 3)), "os.symlink": (((1, False),), (2,)),
    "os.chmod": (((0, True),), (2,)), "os.chown": (((0, True),), (3,)),
    "os.utime": (((0, True),), (3,)), "os.truncate": (((0, True),), ()),
    "os.setxattr": (((0, True),), ()), "os.removexattr": (((0, True),), ()),
}
_SOCKET_EVENTS = frozenset({
    "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo",
    "socket.gethostbyaddr", "socket.gethostbyname", "socket.gethostname",
    "socket.getnameinfo", "socket.getservbyname", "socket.getservbyport", "socket.sendmsg",
    "socket.sendto", "socket.sethostname"})
_OTHER_EVENTS = frozenset({"open", "import", "os.kill", "os.killpg", "object.__setattr__",
                           "object.__delattr__", "sqlite3.connect"})
_DEVICES = frozenset({os.devnull, "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"})
_NATIVE_MODULES = frozenset({"ctypes", "_ctypes", "cffi", "_cffi_backend", "_dbm", "_gdbm",
                             "readline"})


def _audit(event: str, args: tuple, type: Any = None, str: Any = None, watched: Any = None,
           forbidden: Any = None, path_event_names: Any = None, blocked: Any = None,
           check_open: Any = None, check_import: Any = None, check_path_event: Any = None,
           check_socket: Any = None, check_signal: Any = None, check_setattr: Any = None,
           check_sqlite: Any = None) -> None:
    """The audit hook: raise for what the sandbox forbids (see the module docstring)."""
    if type(event) is not str or event not in watched:
        return
    if event == "open":
        check_open(args)
    elif event == "import":
        check_import(args)
    elif event in path_event_names:
        check_path_event(event, args)
    elif event.startswith("socket."):
        check_socket(event, args)
    elif event == "os.kill" or event == "os.killpg":
        check_signal(event, args)
    elif event == "object.__setattr__" or event == "object.__delattr__":
        check_setattr(args)
    elif event == "sqlite3.connect":
        check_sqlite(args)
    else:
        for reason, events in forbidden:
            if event in events:
                raise blocked(f"blocked: {reason} ({event})")


def _check_open(args: tuple, type: Any = None, int: Any = None, blocked: Any = None,
                os_error: Any = None, stat: Any = None, is_dir: Any = None,
                is_char_device: Any = None, is_block_device: Any = None,
                write_flags: Any = None, devnull: Any = None, devices: Any = None,
                text_path: Any = None, resolve: Any = None,
                require_scratch: Any = None) -> None:
    path, _, flags = args
    if type(path) is int:
        return  # wraps a descriptor that was itself checked when opened
    if type(flags) is not int:
        raise blocked("blocked: open with unusual flags")
    resolved = resolve(text_path(path), True)
    if flags & write_flags and resolved != devnull:
        require_scratch(resolved)
    try:
        mode = stat(resolved).st_mode
    except os_error:
        return
    if is_dir(mode):  # a directory descriptor would let dir_fd= paths skip these checks
        raise blocked(f"blocked: opening a directory ({resolved}); use os.listdir")
    if (is_char_device(mode) or is_block_device(mode)) and resolved not in devices:
        raise blocked(f"blocked: opening the device {resolved}")


def _check_import(args: tuple, type: Any = None, str: Any = None, blocked: Any = None,
                  import_error: Any = None, native_modules: Any = None,
                  sealed_modules: Any = None, scratch_prefix: Any = None,
                  trusted_prefixes: Any = None, text_path: Any = None,
                  resolve: Any = None) -> None:
    name, filename = args[0], args[1]
    if type(name) is not str:
        raise blocked("blocked: unusual module name")
    if name.partition(".")[0] in native_modules:
        raise import_error(f"blocked: {name} (native code is not available in the sandbox)")
    if filename is None:
        return
    if name in sealed_modules:
        raise blocked(f"blocked: re-creating the module {name}")
    resolved = resolve(text_path(filename), True)
    if resolved.startswith(scratch_prefix) or not resolved.startswith(trusted_prefixes):
        raise import_error(f"blocked: native extension {resolved} (only extensions of the "
                           "Python installation may load)")


def _check_path_event(event: str, args: tuple, type: Any = None, int: Any = None,
                      blocked: Any = None, os_error: Any = None, readlink: Any = None,
                      path_event_names: Any = None, path_event_specs: Any = None,
                      text_path: Any = None, resolve: Any = None,
                      require_scratch: Any = None) -> None:
    paths, dir_fds = path_event_specs[path_event_names.index(event)]
    for index in dir_fds:
        dir_fd = args[index]
        if not (dir_fd is None or (type(dir_fd) is int and dir_fd == -1)):
            raise blocked(f"blocked: dir_fd arguments ({event})")
    for index, follow in paths:
        target = args[index]
        if type(target) is int:  # a descriptor: check the file it refers to
            try:
                target = readlink(f"/proc/self/fd/{target}")
            except os_error:
                continue  # not open: the call itself fails
            if not target.startswith("/"):
                continue  # a pipe or socket, not a file
        require_scratch(resolve(text_path(target), follow))


def _check_socket(event: str, args: tuple, type: Any = None, int: Any = None,
                  blocked: Any = None, allow_network: Any = None, af_unix: Any = None) -> None:
    if allow_network or event == "socket.gethostname":
        return
    if event == "socket.__new__" and type(args[1]) is int and args[1] == af_unix:
        return  # an unconnected Unix socket, e.g. a socketpair for asyncio; connect is blocked
    raise blocked(f"blocked: network access ({event})")


def _check_signal(event: str, args: tuple, type: Any = None, int: Any = None,
                  blocked: Any = None, pid: Any = None) -> None:
    target = args[0]
    own = (0, pid) if event == "os.killpg" else (0, pid, -pid)
    if type(target) is not int or target not in own:
        raise blocked(f"blocked: signalling another process ({event})")


def _check_setattr(args: tuple, type: Any = None, str: Any = None, blocked: Any = None,
                   function_type: Any = None, guard_codes: Any = None) -> None:
    target, name = args[0], args[1]
    if type(name) is not str:
        raise blocked("blocked: unusual attribute name")
    if (name == "__code__" or name == "__defaults__") and type(target) is function_type \
            and target.__code__ in guard_codes:
        raise blocked("blocked: changing the sandbox's own code")


def _check_sqlite(args: tuple, blocked: Any = None, text_path: Any = None,
                  resolve: Any = None, require_scratch: Any = None) -> None:
    database = text_path(args[0])
    if database == "" or database == ":memory:":
        return
    if database.startswith("file:"):
        raise blocked("blocked: sqlite URIs; pass a plain file name")
    require_scratch(resolve(database, True))


def _text_path(path: object, type: Any = None, str: Any = None, bytes: Any = None,
               issubclass: Any = None, blocked: Any = None, fspath: Any = None,
               path_types: Any = None) -> str:
    """A path argument as str without running user code: besides str and bytes (and their
    subclasses), only exact pathlib paths and DirEntry objects are converted; other
    path-likes could answer differently for this check and for the real call."""
    kind = type(path)
    if kind in path_types:
        path = fspath(path)
        kind = type(path)
    if kind is str:
        return path
    if kind is bytes:
        return path.decode("utf-8", "surrogateescape")
    if issubclass(kind, str):
        return "".join((path,))  # an exact copy of the characters, no methods called
    raise blocked("blocked: paths must be str, bytes or pathlib paths")


def _resolve(path: str, follow_last: bool, getcwd: Any = None, lstat: Any = None,
             readlink: Any = None, is_link: Any = None, os_error: Any = None,
             blocked: Any = None, pid_text: Any = None) -> str:
    """`path` made absolute with symlinks resolved (like os.path.realpath, using C functions
    only). Raises when the walk enters another process's /proc/<pid>/ directory."""
    if not path.startswith("/"):
        path = getcwd() + "/" + path
    todo = path.split("/")
    todo.reverse()
    done: list = []
    links = 0
    while todo:
        part = todo.pop()
        if part == "" or part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        done.append(part)
        if done[0] == "proc" and done[1:] and done[1].isdigit() and done[1] != pid_text:
            raise blocked(f"blocked: another process's /proc entry (/proc/{done[1]})")
        current = "/" + "/".join(done)
        try:
            mode = lstat(current).st_mode
        except os_error:
            continue
        if is_link(mode) and (todo or follow_last):
            links += 1
            if links > 40:
                raise blocked(f"blocked: too many symbolic links in {path}")
            target = readlink(current)
            done.pop()
            if target.startswith("/"):
                done.clear()
            pieces = target.split("/")
            pieces.reverse()
            todo.extend(pieces)
    return "/" + "/".join(done)


def _require_scratch(resolved: str, blocked: Any = None, scratch: Any = None,
                     scratch_prefix: Any = None) -> None:
    if resolved != scratch and not resolved.startswith(scratch_prefix):
        raise blocked(f"blocked: writing outside the scratch directory ({resolved})")


# Callees before callers: each is bound with the ones before it available.
_GUARD_FUNCTIONS = (_require_scratch, _resolve, _text_path, _check_open, _check_import,
                    _check_path_event, _check_socket, _check_signal, _check_setattr,
                    _check_sqlite, _audit)


def _bind_guard(scratch: str, allow_network: bool) -> dict[str, Callable[..., Any]]:
    """The guard functions with their dependencies bound, by name ("audit" is the hook)."""
    values = _guard_values(scratch, allow_network)
    bound: dict[str, Callable[..., Any]] = {}
    for template in _GUARD_FUNCTIONS:
        code = template.__code__
        names = code.co_varnames[code.co_argcount - len(template.__defaults__):
                                 code.co_argcount]
        function = types.FunctionType(code, template.__globals__, template.__name__,
                                      tuple(values[name] for name in names))
        bound[template.__name__.lstrip("_")] = values[template.__name__.lstrip("_")] = function
    return bound


def _guard_values(scratch: str, allow_network: bool) -> dict[str, Any]:
    """Everything a guard parameter may be bound to: immutable values and C functions."""
    import _socket
    import _stat
    import pathlib

    scratch = scratch.rstrip("/") or "/"
    return {
        "type": type, "str": str, "bytes": bytes, "int": int, "issubclass": issubclass,
        "blocked": PermissionError, "import_error": ImportError, "os_error": OSError,
        "fspath": os.fspath, "getcwd": os.getcwd, "lstat": os.lstat, "stat": os.stat,
        "readlink": os.readlink, "is_link": _stat.S_ISLNK, "is_dir": _stat.S_ISDIR,
        "is_char_device": _stat.S_ISCHR, "is_block_device": _stat.S_ISBLK,
        "scratch": scratch, "scratch_prefix": scratch.rstrip("/") + "/",
        "pid": os.getpid(), "pid_text": str(os.getpid()), "allow_network": allow_network,
        "trusted_prefixes": _trusted_prefixes(scratch), "af_unix": _socket.AF_UNIX,
        "write_flags": os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
        "devnull": os.devnull, "devices": _DEVICES,
        "watched": _OTHER_EVENTS | _SOCKET_EVENTS | frozenset(_PATH_EVENTS).union(
            *(events for _, events in _FORBIDDEN)),
        "forbidden": _FORBIDDEN, "path_event_names": tuple(_PATH_EVENTS),
        "path_event_specs": tuple(_PATH_EVENTS.values()), "native_modules": _NATIVE_MODULES,
        "sealed_modules": frozenset({"_posixsubprocess"}),
        "path_types": (pathlib.PurePosixPath, pathlib.PosixPath, os.DirEntry),
        "function_type": types.FunctionType,
        "guard_codes": tuple(f.__code__ for f in _GUARD_FUNCTIONS),
    }


def _trusted_prefixes(scratch: str) -> tuple[str, ...]:
    """The import path's directories (the Python installation and site-packages) as they
    are before user code runs, minus any inside the scratch directory."""
    roots = {os.path.realpath(p).rstrip("/") + "/" for p in sys.path if p and os.path.isdir(p)}
    return tuple(sorted(root for root in roots if not root.startswith(scratch + "/")))
