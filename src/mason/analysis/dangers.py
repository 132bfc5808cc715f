"""Known-dangerous globals: what a name can do, in words, and how bad it is.

This table explains; it does not decide.  The policy (an allowlist) decides whether a global
may load: a name outside it is reported whether or not it appears here.  What the table adds
is severity and the reason: a name outside the policy that is listed here makes a scan's
verdict ``dangerous`` (it can run code or reach the system), one that is not makes it
``needs-allow`` (most often the user's own class, which is safe to allow once checked).

Entries are grouped by what the name reaches.  A module entry covers the module and every
module below it; a name entry covers that global and anything reached through it
(``os.system`` covers ``os.system.__call__``).  Sources: the public denylists of picklescan,
fickling and modelscan, the gadgets published against them, and the standard library's own
documentation of what each module does.
"""

from __future__ import annotations

__all__ = ["CODE", "FILE", "PROCESS", "NETWORK", "GADGET", "UNKNOWN", "BOMB", "classify",
           "CATEGORIES"]

CODE = "code execution"
FILE = "file access"
PROCESS = "process access"
NETWORK = "network access"
GADGET = "attribute-access gadget"
UNKNOWN = "unknown import"
BOMB = "resource bomb"
CATEGORIES = (CODE, FILE, PROCESS, NETWORK, GADGET, UNKNOWN, BOMB)

_NESTED = "loads another serialized stream, which can itself run anything"

# Whole modules (and their submodules): module -> (category, reason).
_MODULES: dict[str, tuple[str, str]] = {
    # processes and the operating system
    "os": (PROCESS, "os runs commands (system, popen, exec*, spawn*) and reaches every file"),
    "posix": (PROCESS, "posix is os on Unix: system, popen, exec*, file access"),
    "nt": (PROCESS, "nt is os on Windows: system, startfile, exec*, file access"),
    "subprocess": (PROCESS, "subprocess starts programs"),
    "_posixsubprocess": (PROCESS, "_posixsubprocess forks and executes programs"),
    "pty": (PROCESS, "pty.spawn starts programs"),
    "commands": (PROCESS, "commands (Python 2) runs shell commands"),
    "popen2": (PROCESS, "popen2 (Python 2) runs shell commands"),
    "multiprocessing": (PROCESS, "multiprocessing starts processes and runs callables"),
    "concurrent": (CODE, "concurrent.futures runs callables in threads and processes"),
    "asyncio": (PROCESS, "asyncio starts subprocesses, opens connections and runs coroutines"),
    "signal": (PROCESS, "signal installs handlers and sends signals"),
    "_signal": (PROCESS, "_signal installs handlers and sends signals"),
    "threading": (CODE, "threading runs callables in new threads"),
    "_thread": (CODE, "_thread runs callables in new threads"),
    "atexit": (CODE, "atexit registers callables to run at exit"),
    "sys": (CODE, "sys reaches the interpreter's modules, hooks and state"),
    "_osx_support": (PROCESS, "_osx_support runs shell commands"),
    "_aix_support": (PROCESS, "_aix_support runs shell commands"),
    "_pyrepl": (PROCESS, "_pyrepl's pagers run shell commands"),
    "platform": (PROCESS, "platform runs helper programs (popen, uname probes)"),
    "ctypes": (CODE, "ctypes loads native libraries and calls C functions"),
    "_ctypes": (CODE, "_ctypes loads native libraries and calls C functions"),
    "cffi": (CODE, "cffi loads native libraries and calls C functions"),
    # running Python code
    "code": (CODE, "code runs Python source"),
    "codeop": (CODE, "codeop compiles Python source"),
    "runpy": (CODE, "runpy runs modules and scripts"),
    "marshal": (CODE, "marshal builds code objects"),
    "importlib": (CODE, "importlib imports (and so runs) any module"),
    "_frozen_importlib": (CODE, "the import system imports (and runs) any module"),
    "_frozen_importlib_external": (CODE, "the import system imports (and runs) any module"),
    "_imp": (CODE, "_imp imports and executes modules"),
    "imp": (CODE, "imp imports and executes modules"),
    "zipimport": (CODE, "zipimport imports modules from archives"),
    "pkgutil": (CODE, "pkgutil.resolve_name imports any module and returns any attribute"),
    "pydoc": (CODE, "pydoc.locate imports anything; its pagers run shell commands"),
    "site": (CODE, "site executes .pth files and changes the import path"),
    "inspect": (GADGET, "inspect reaches frames, globals and source of live objects"),
    "gc": (GADGET, "gc reaches every live object of the interpreter"),
    "pdb": (CODE, "pdb runs Python statements"),
    "bdb": (CODE, "bdb runs Python statements"),
    "cProfile": (CODE, "cProfile.run executes a string of Python"),
    "profile": (CODE, "profile.run executes a string of Python"),
    "timeit": (CODE, "timeit executes strings of Python"),
    "trace": (CODE, "trace runs Python code"),
    "doctest": (CODE, "doctest runs Python code from strings"),
    "unittest": (CODE, "unittest imports and runs code"),
    "test": (CODE, "the test package spawns interpreters and runs code"),
    "idlelib": (CODE, "idlelib runs Python code"),
    "lib2to3": (CODE, "lib2to3 evaluates grammar strings"),
    "compileall": (FILE, "compileall compiles and writes files"),
    "py_compile": (FILE, "py_compile compiles and writes files"),
    "venv": (PROCESS, "venv creates environments and runs pip"),
    "ensurepip": (PROCESS, "ensurepip runs pip"),
    "pip": (PROCESS, "pip installs and runs packages"),
    "setuptools": (PROCESS, "setuptools runs build commands"),
    "distutils": (FILE, "distutils writes files and runs commands"),
    "IPython": (CODE, "IPython runs code and shell commands"),
    # loaders of other serialized data: a nested pickle can do anything
    "pickle": (CODE, f"pickle {_NESTED}"),
    "_pickle": (CODE, f"_pickle {_NESTED}"),
    "pickletools": (CODE, f"pickletools {_NESTED}"),
    "copyreg": (CODE, "copyreg calls constructors named by the stream"),
    "copy_reg": (CODE, "copyreg calls constructors named by the stream"),
    "dill": (CODE, f"dill {_NESTED}, and rebuilds code"),
    "cloudpickle": (CODE, "cloudpickle rebuilds functions from code objects"),
    "shelve": (FILE, f"shelve opens database files and {_NESTED}"),
    "dbm": (FILE, "dbm opens database files"),
    "mason.byvalue": (CODE, "the pickle carries code by value (functions or classes): "
                            "loading it runs that code"),
    # files
    "shutil": (FILE, "shutil copies, moves and deletes files and trees"),
    "tempfile": (FILE, "tempfile creates files and directories"),
    "filecmp": (FILE, "filecmp reads files"),
    "fileinput": (FILE, "fileinput reads (and rewrites) files"),
    "glob": (FILE, "glob lists the file system"),
    "linecache": (FILE, "linecache reads any file"),
    "tarfile": (FILE, "tarfile reads and extracts archives to disk"),
    "zipfile": (FILE, "zipfile reads and extracts archives to disk"),
    "mmap": (FILE, "mmap maps files into memory"),
    "sqlite3": (FILE, "sqlite3 opens and writes database files"),
    "_sqlite3": (FILE, "_sqlite3 opens and writes database files"),
    "syslog": (FILE, "syslog writes to the system log"),
    "logging.config": (CODE, "logging.config evaluates configuration and listens on a socket"),
    "logging.handlers": (FILE, "logging handlers open files and sockets"),
    # network
    "socket": (NETWORK, "socket opens network connections"),
    "_socket": (NETWORK, "_socket opens network connections"),
    "ssl": (NETWORK, "ssl opens network connections (get_server_certificate)"),
    "select": (NETWORK, "select multiplexes sockets"),
    "selectors": (NETWORK, "selectors multiplexes sockets"),
    "socketserver": (NETWORK, "socketserver listens on the network"),
    "http": (NETWORK, "http opens connections and serves requests"),
    "httplib": (NETWORK, "httplib (Python 2) opens connections"),
    "urllib": (NETWORK, "urllib fetches URLs"),
    "urllib2": (NETWORK, "urllib2 (Python 2) fetches URLs"),
    "urllib3": (NETWORK, "urllib3 fetches URLs"),
    "requests": (NETWORK, "requests fetches URLs"),
    "httpx": (NETWORK, "httpx fetches URLs"),
    "aiohttp": (NETWORK, "aiohttp fetches URLs"),
    "ftplib": (NETWORK, "ftplib opens FTP connections"),
    "smtplib": (NETWORK, "smtplib sends mail"),
    "imaplib": (PROCESS, "imaplib opens connections; IMAP4_stream runs a shell command"),
    "poplib": (NETWORK, "poplib opens connections"),
    "nntplib": (NETWORK, "nntplib opens connections"),
    "telnetlib": (NETWORK, "telnetlib opens connections"),
    "xmlrpc": (NETWORK, "xmlrpc calls remote procedures"),
    "webbrowser": (PROCESS, "webbrowser starts a browser on any URL"),
    # third-party loaders and runners
    "joblib.numpy_pickle_compat": (FILE, "joblib's old format reads arrays from other files "
                                         "named in the stream"),
    "torch.serialization": (CODE, f"torch.serialization.load {_NESTED}"),
    "torch.hub": (NETWORK, "torch.hub downloads and runs code"),
    "torch.jit": (CODE, "torch.jit compiles and runs code"),
    "torch._dynamo": (CODE, "torch._dynamo evaluates guard expressions"),
    "torch._inductor": (PROCESS, "torch._inductor compiles and runs programs"),
    "torch.utils.collect_env": (PROCESS, "collect_env runs commands"),
    "torch.utils.bottleneck": (CODE, "bottleneck runs code under profilers"),
    "torch.utils._config_module": (CODE, f"load_config {_NESTED}"),
    "numpy.f2py": (CODE, "numpy.f2py evaluates strings and builds extension modules"),
    "numpy.testing": (CODE, "numpy.testing's runstring executes Python source"),
    "numpy.distutils": (PROCESS, "numpy.distutils runs build commands"),
    "numpy.ctypeslib": (CODE, "numpy.ctypeslib loads native libraries"),
    "pandas.io": (FILE, "pandas.io reads and writes files and URLs"),
    "keras": (CODE, "keras layers (Lambda) run code"),
    "tensorflow": (CODE, "tensorflow ops read files and run code"),
    "pexpect": (PROCESS, "pexpect starts programs"),
    "paramiko": (NETWORK, "paramiko opens SSH connections"),
    "fabric": (PROCESS, "fabric runs commands"),
    "invoke": (PROCESS, "invoke runs commands"),
    "sh": (PROCESS, "sh runs commands"),
}

# Single names: dotted -> (category, reason).
_NAMES: dict[str, tuple[str, str]] = {
    **{f"{b}.{name}": (CODE, f"{name}() runs Python code from a string or code object")
       for b in ("builtins", "__builtin__") for name in ("eval", "exec", "compile", "execfile")},
    **{f"{b}.{name}": (CODE, f"{name}() imports (and so runs) any module")
       for b in ("builtins", "__builtin__") for name in ("__import__", "reload")},
    **{f"{b}.{name}": (GADGET, f"{name}() reaches any attribute of any object the stream holds")
       for b in ("builtins", "__builtin__")
       for name in ("getattr", "setattr", "delattr", "vars", "globals", "locals", "dir")},
    **{f"{b}.{name}": (FILE, f"{name}() opens any file")
       for b in ("builtins", "__builtin__") for name in ("open", "file")},
    **{f"{b}.{name}": (CODE, f"{name}() calls a function the stream chooses")
       for b in ("builtins", "__builtin__") for name in ("apply", "map", "filter")},
    **{f"{b}.{name}": (PROCESS, f"{name}() stops or takes over the interpreter")
       for b in ("builtins", "__builtin__")
       for name in ("breakpoint", "input", "raw_input", "exit", "quit", "help")},
    **{f"{b}.type": (CODE, "type() with three arguments builds a class, with any methods")
       for b in ("builtins", "__builtin__")},
    **{f"{b}.memoryview": (GADGET, "memoryview exposes raw memory of objects")
       for b in ("builtins", "__builtin__")},
    **{f"{b}.{name}": (BOMB, f"{name}(n) allocates n bytes or items")
       for b in ("builtins", "__builtin__") for name in ("range", "bytes", "bytearray")},
    **{f"{op}.{name}": (GADGET, f"operator.{name} reaches attributes or calls methods by name")
       for op in ("operator", "_operator")
       for name in ("attrgetter", "itemgetter", "methodcaller", "getitem", "setitem",
                    "delitem", "call")},
    **{f"{io}.{name}": (FILE, f"{io}.{name} opens any file")
       for io in ("io", "_io") for name in ("open", "open_code", "FileIO")},
    "logging.FileHandler": (FILE, "logging.FileHandler creates any file"),
    "uuid._get_command_stdout": (PROCESS, "uuid._get_command_stdout runs a command"),
    "functools.partial": (CODE, "functools.partial binds arguments to any callable"),
    "functools.reduce": (CODE, "functools.reduce calls any callable repeatedly"),
    "functools.cached_property": (GADGET, "cached_property calls a method by name"),
    "types.FunctionType": (CODE, "types.FunctionType builds a function from a code object"),
    "types.LambdaType": (CODE, "types.LambdaType builds a function from a code object"),
    "types.CodeType": (CODE, "types.CodeType builds code objects"),
    "types.MethodType": (CODE, "types.MethodType binds any callable as a method"),
    "types.ModuleType": (CODE, "types.ModuleType builds module objects"),
    "_codecs.encode": (BOMB, "_codecs.encode reaches every codec, compressors included"),
    "_codecs.decode": (BOMB, "_codecs.decode reaches every codec, decompressors included"),
    "codecs.encode": (BOMB, "codecs.encode reaches every codec, compressors included"),
    "codecs.decode": (BOMB, "codecs.decode reaches every codec, decompressors included"),
    "codecs.open": (FILE, "codecs.open opens any file"),
    "fractions.Fraction": (BOMB, "Fraction() parses exponents of any size"),
    "string.Formatter": (GADGET, "str.format-style fields reach attributes by name"),
    "numpy.load": (CODE, f"numpy.load with allow_pickle {_NESTED}"),
    "numpy.lib.npyio.load": (CODE, f"numpy.load {_NESTED}"),
    "numpy.fromfile": (FILE, "numpy.fromfile reads any file"),
    "numpy.memmap": (FILE, "numpy.memmap maps any file"),
    "numpy.save": (FILE, "numpy.save writes files"),
    "numpy.savetxt": (FILE, "numpy.savetxt writes files"),
    "numpy.loadtxt": (FILE, "numpy.loadtxt reads files"),
    "numpy.genfromtxt": (FILE, "numpy.genfromtxt reads files and URLs"),
    "pandas.read_pickle": (CODE, f"pandas.read_pickle {_NESTED}"),
    "pandas.read_csv": (FILE, "pandas.read_csv reads files and URLs"),
    "joblib.load": (CODE, f"joblib.load {_NESTED}"),
    "joblib.numpy_pickle.load": (CODE, f"joblib.load {_NESTED}"),
    "joblib.numpy_pickle.NDArrayWrapper": (FILE, "joblib's old array wrapper reads a file "
                                                 "named in the stream"),
    "torch.load": (CODE, f"torch.load {_NESTED}"),
    "torch.save": (FILE, "torch.save writes files"),
    "torch.from_file": (FILE, "torch.from_file maps any file"),
    "yaml.load": (CODE, "yaml.load builds arbitrary objects"),
    "yaml.unsafe_load": (CODE, "yaml.unsafe_load builds arbitrary objects"),
    "code.InteractiveInterpreter.runcode": (CODE, "runcode executes code"),
    "mason.signing.signed": (CODE, "a signed envelope: it loads only with the key that "
                                   "signed it (key=), and then runs trusted"),
}

# Module names a wildcard-allowed qualname must not walk through (allowed_mod.os.system).
WALK_MODULES = frozenset(name.split(".")[0] for name in _MODULES) | {"builtins", "__builtins__"}


def classify(module: str, name: str) -> tuple[str, str] | None:
    """``(category, reason)`` if ``module.name`` is known to be dangerous, else None."""
    dotted = f"{module}.{name}"
    # The name itself, then any prefix of it (a name covers what is reached through it).
    candidate = dotted
    while True:
        found = _NAMES.get(candidate)
        if found is not None:
            return found
        candidate, dot, _ = candidate.rpartition(".")
        if not dot or len(candidate) <= len(module) - 1:
            break
    # The module, then its parents.
    candidate = module
    while candidate:
        found = _MODULES.get(candidate)
        if found is not None:
            return found
        candidate, dot, _ = candidate.rpartition(".")
        if not dot:
            break
    # builtins' dunder walks (builtins.object.__subclasses__ ...) reach everything.
    parts = name.split(".")
    if len(parts) > 1 and any(p.startswith("__") and p.endswith("__") for p in parts[1:]):
        return (GADGET, f"{dotted} walks through dunder attributes, which reach any object")
    return None
