"""Run a command under the seccomp filters a systemd unit would give it, without systemd.

    python -m tests.support.seccomp systemd/sshreg.service -- COMMAND [ARGS...]

CI has no systemd as PID 1, so the unit's sandbox cannot be started for real. The parts of
it most likely to break a Python program are its seccomp filters, and these are plain
kernel features: this module rebuilds them from the unit as systemd 252 does, with the
system's libseccomp (through ctypes) and systemd's own syscall sets
(`systemd-analyze syscall-filter`), loads them, and execs the command:

- `SystemCallFilter=` (allow-list, then `~` removals) with `SystemCallErrorNumber=`,
  plus the calls systemd always allows;
- `MemoryDenyWriteExecute=yes`: EPERM for mmap(PROT_WRITE|PROT_EXEC), mprotect and
  pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC (systemd's seccomp rules);
- `RestrictAddressFamilies=`: socket() of any other family fails with EAFNOSUPPORT;
- `NoNewPrivileges=yes`.

`--kill` makes a call outside the allow-list kill the process instead of failing, to find
calls that a program would otherwise survive silently.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_CMP_EQ = 4
SCMP_CMP_GT = 6
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
PR_SET_NO_NEW_PRIVS = 38

# Always allowed with an allow-list (systemd.exec(5), SystemCallFilter=).
IMPLICIT = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn",
            "clock_getres", "clock_gettime", "clock_nanosleep", "gettimeofday", "nanosleep",
            "time"}


def scmp_act_errno(code: int) -> int:
    """libseccomp's SCMP_ACT_ERRNO(code)."""
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def available() -> str | None:
    """Why this cannot run here, or None."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed"
    if ctypes.util.find_library("seccomp") is None:
        return "libseccomp is not installed"
    return None


def syscall_sets() -> dict[str, list[str]]:
    """systemd's named syscall sets (`@name` -> members, which may be other sets)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    sets: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = sets.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
        elif not line.strip():
            current = None
    return sets


def expand(names: list[str], sets: dict[str, list[str]]) -> set[str]:
    result: set[str] = set()
    for name in names:
        result |= expand(sets[name], sets) if name.startswith("@") else {name}
    return result


@dataclass
class Sandbox:
    """The seccomp-related settings of a unit's [Service] section."""

    allowed: set[str] | None = None
    errno_name: str | None = None
    mdwe: bool = False
    families: set[int] | None = None
    no_new_privileges: bool = False

    @classmethod
    def from_unit(cls, text: str) -> Sandbox:
        sets = syscall_sets()
        sandbox = cls()
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if not sep or line.lstrip().startswith("#"):
                continue
            key, value = key.strip(), value.strip()
            if key == "SystemCallFilter":
                sandbox._filter(value, sets)
            elif key == "SystemCallErrorNumber":
                sandbox.errno_name = value
            elif key == "MemoryDenyWriteExecute":
                sandbox.mdwe = value == "yes"
            elif key == "RestrictAddressFamilies":
                sandbox.families = {getattr(socket, f) for f in value.split()}
            elif key == "NoNewPrivileges":
                sandbox.no_new_privileges = value == "yes"
        return sandbox

    def _filter(self, value: str, sets: dict[str, list[str]]) -> None:
        remove = value.startswith("~")
        names = expand(value.lstrip("~").split(), sets)
        if self.allowed is None:
            if remove:
                raise ValueError("only allow-list filters (the first line without ~) are supported")
            self.allowed = set(IMPLICIT)
        self.allowed = self.allowed - names if remove else self.allowed | names


class Seccomp:
    """The few libseccomp calls needed, through ctypes."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(ArgCmp)]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def number(self, name: str) -> int | None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        return None if nr < 0 else nr

    def load(self, default: int, rules: list[tuple[int, str, list[ArgCmp]]]) -> None:
        ctx = self.lib.seccomp_init(default)
        if not ctx:
            raise OSError("seccomp_init failed")
        try:
            for action, name, args in rules:
                nr = self.number(name)
                if nr is None:
                    continue  # not a call on this architecture
                array = (ArgCmp * len(args))(*args) if args else None
                rc = self.lib.seccomp_rule_add_array(ctx, action, nr, len(args), array)
                if rc < 0:
                    raise OSError(-rc, f"seccomp_rule_add {name}: {os.strerror(-rc)}")
            rc = self.lib.seccomp_load(ctx)
            if rc < 0:
                raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
        finally:
            self.lib.seccomp_release(ctx)


def apply(sandbox: Sandbox, kill: bool = False) -> None:
    """Load the sandbox's filters into this process (and so into what it execs)."""
    if sandbox.no_new_privileges or os.geteuid() != 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    seccomp = Seccomp()
    eperm = scmp_act_errno(errno.EPERM)
    if sandbox.families is not None:
        fail = scmp_act_errno(errno.EAFNOSUPPORT)
        top = max(sandbox.families)
        rules = [(fail, "socket", [ArgCmp(0, SCMP_CMP_EQ, family, 0)])
                 for family in range(top) if family not in sandbox.families]
        rules.append((fail, "socket", [ArgCmp(0, SCMP_CMP_GT, top, 0)]))
        seccomp.load(SCMP_ACT_ALLOW, rules)
    if sandbox.mdwe:
        seccomp.load(SCMP_ACT_ALLOW, [
            (eperm, "mmap", [ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC | PROT_WRITE,
                                    PROT_EXEC | PROT_WRITE)]),
            (eperm, "mprotect", [ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (eperm, "pkey_mprotect", [ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (eperm, "shmat", [ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
        ])
    if sandbox.allowed is not None:
        code = getattr(errno, sandbox.errno_name or "", None)
        default = SCMP_ACT_KILL_PROCESS if kill or code is None else scmp_act_errno(code)
        seccomp.load(default, [(SCMP_ACT_ALLOW, name, []) for name in sorted(sandbox.allowed)])


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    options, command = argv[:split], argv[split + 1:]
    units = [a for a in options if a != "--kill"]
    if len(units) != 1 or not command:
        print(__doc__, file=sys.stderr)
        return 2
    with open(units[0]) as f:
        apply(Sandbox.from_unit(f.read()), kill="--kill" in options)
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
