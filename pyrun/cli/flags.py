"""A small command-line parser driven by flag tables (no argparse).

argparse is not used: importing it (and ``re`` behind it) costs more than
a container start, and every ``pyrun`` call would pay it.  Flags follow
runc's and ctr's (urfave/cli) conventions: ``--flag value``,
``--flag=value``, ``-flag value``, short aliases, flags before or after
positionals.  Commands may be nested (``images pull``): a command table
maps a tuple of words to (summary, positionals, flags); a positional is
(name, True) required, (name, False) optional, or (name, "rest") for all
remaining words.
"""
from pyrun.errdefs import InvalidArgument


class Flag:
    """``multiple``: the flag may repeat; its value is a list."""
    __slots__ = ("names", "dest", "takes_value", "default", "help", "convert", "multiple")

    def __init__(self, names, help, takes_value=False, default=None, convert=str, multiple=False):
        self.names = names
        self.dest = names[0].lstrip("-").replace("-", "_")
        self.takes_value = takes_value or multiple
        self.default = default if self.takes_value else bool(default)
        self.help = help
        self.convert = convert
        self.multiple = multiple


class Args:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _lookup(flags, arg):
    name, eq, value = arg.partition("=")
    if not name.startswith("--") and len(name) > 2:
        name = "-" + name  # runc accepts -flag for --flag
    for f in flags:
        if name in f.names:
            return f, (value if eq else None)
    return None, None


def _take(flags, argv, i, out, where):
    """Take the flag at ``argv[i]``; ``where``: the command, for errors
    ("" for the global flags: the caller prefixes the program's name)."""
    where = f"{where}: " if where else ""
    f, value = _lookup(flags, argv[i])
    if f is None:
        raise InvalidArgument(f"{where}unknown flag {argv[i]!r} (see --help)")
    if f.takes_value:
        if value is None:
            if i + 1 >= len(argv):
                raise InvalidArgument(f"{where}{f.names[0]} needs a value")
            i += 1
            value = argv[i]
        try:
            if f.multiple:
                out[f.dest] = list(out.get(f.dest) or []) + [f.convert(value)]
            else:
                out[f.dest] = f.convert(value)
        except ValueError:
            raise InvalidArgument(f"{where}{f.names[0]}: bad value {value!r}") from None
    else:
        out[f.dest] = value not in ("false", "0") if value is not None else True
    return i + 1


def parse(argv, prog, global_flags, commands):
    """Parse ``argv`` (without the program name) into an :class:`Args`
    with ``verb`` set to the command's words joined by a space (None for no
    command; a group word alone, such as ``images``, gives ``verb`` that
    word and ``help`` True).  Raises InvalidArgument."""
    out = {f.dest: f.default for f in global_flags}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        i = _take(global_flags, argv, i, out, "")
    if i >= len(argv):
        out["verb"] = None
        return Args(**out)
    words = []
    while i < len(argv) and (*words, argv[i]) in _prefixes(commands):
        words.append(argv[i])
        i += 1
    if tuple(words) not in commands:
        if words and (i >= len(argv) or argv[i].startswith("-")):
            out["verb"] = " ".join(words)
            out["help"] = True
            return Args(**out)
        raise InvalidArgument(f"unknown command {' '.join([*words, argv[i]])!r} "
                              f"(see {prog} {' '.join([*words, '--help'])})")
    verb = " ".join(words)
    out["verb"] = verb
    _, positionals, flags = commands[tuple(words)]
    flags = flags + [Flag(("--help", "-h"), "show help")]
    out.update({f.dest: f.default for f in flags})
    fixed = [p for p in positionals if p[1] != "rest"]
    rest = next((p[0] for p in positionals if p[1] == "rest"), None)
    values, tail = [], []
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            remaining = argv[i + 1:]
            need = len(fixed) - len(values)
            values.extend(remaining[:need])
            (tail if rest else values).extend(remaining[need:])
            break
        if rest is not None and fixed and len(values) >= len(fixed):
            tail = argv[i:]  # after exec's ID (ps's ID), even "-x" is the command's
            break
        if arg.startswith("-") and arg != "-":
            i = _take(flags, argv, i, out, verb)
            continue
        if len(values) < len(fixed) or rest is None:
            values.append(arg)
            i += 1
            continue
        # Everything from here on belongs to the rest (exec's command).
        tail = argv[i:]
        break
    if out.get("help"):
        return Args(**out)
    for n, (name, required) in enumerate(fixed):
        if n < len(values):
            out[name] = values[n]
        elif required:
            raise InvalidArgument(f"{verb}: missing the {name} argument")
        else:
            out[name] = None
    if rest is not None:
        out[rest] = tail
    if len(values) > len(fixed):
        raise InvalidArgument(f"{verb}: unexpected argument {values[len(fixed)]!r}")
    return Args(**out)


def _prefixes(commands):
    out = set()
    for path in commands:
        for n in range(1, len(path) + 1):
            out.add(path[:n])
    return out


def _flag_lines(flags):
    lines = []
    for f in flags:
        names = ", ".join(f.names) + (" VALUE" if f.takes_value else "")
        default = f" (default {f.default})" if f.takes_value and f.default not in (None, "") else ""
        lines.append(f"  {names:<28} {f.help}{default}")
    return lines


def usage(prog, about, global_flags, commands, verb=None):
    """Help text: the command list, or one command's flags.  A group word
    (``images``) lists its sub-commands."""
    path = tuple(verb.split()) if verb else ()
    if path not in commands:
        lines = [f"usage: {prog} [global flags] COMMAND [flags] [args]", "", about, "",
                 "commands:"]
        lines += [f"  {' '.join(name):<22} {summary}" for name, (summary, _, _) in commands.items()
                  if name[:len(path)] == path]
        lines += ["", "global flags:"] + _flag_lines(global_flags)
    else:
        summary, positionals, flags = commands[path]
        args = " ".join(n.upper() + "..." if r == "rest" else n.upper() if r else f"[{n.upper()}]"
                        for n, r in positionals)
        lines = [f"usage: {prog} {verb} [flags] {args}".rstrip(), "", summary]
        if flags:
            lines += ["", "flags:"] + _flag_lines(flags)
    return "\n".join(lines) + "\n"
