"""The `lav2` command reference, from the argparse parsers `lav2_jax.cli.main.build_parser()` builds.

`commands(parser)` walks the parser tree: one entry per command that takes arguments (`lav2 info`, `lav2 convert
meta`, `lav2 data build`, ...), each with its flags. `render()` is the Markdown of the CLI reference page: a
section per command, its usage line and a table of its arguments (flag, value, default, help).
"""

from __future__ import annotations

import argparse
import dataclasses

from md import cell, code, table


@dataclasses.dataclass
class Command:
    path: tuple[str, ...]  # ("convert", "meta")
    parser: argparse.ArgumentParser
    help: str
    children: list[str]  # sub-subcommands (e.g. convert's sources), empty for a leaf

    @property
    def name(self) -> str:
        return " ".join(("lav2",) + self.path)

    @property
    def arguments(self) -> list[argparse.Action]:
        return [a for a in self.parser._actions
                if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _subparsers(parser: argparse.ArgumentParser):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in a._choices_actions}
            return a, helps
    return None, {}


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help_text: str = "") -> list[Command]:
    """Every command of the tree under `parser`, parents before their children, in the parser's order."""
    sub, helps = _subparsers(parser)
    out = [Command(path, parser, help_text or (parser.description or ""), list(sub.choices) if sub else [])]
    if sub:
        for name, child in sub.choices.items():
            out += commands(child, path + (name,), helps.get(name) or child.description or "")
    return out


def flag_names(action: argparse.Action) -> str:
    return ", ".join(action.option_strings) if action.option_strings else action.dest


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices:
        return " &#124; ".join(code(c) if not isinstance(c, str) else f"`{c}`" for c in action.choices)
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    metavar = " ".join(metavar) if isinstance(metavar, tuple) else metavar
    return f"`{metavar}`" + (" …" if action.nargs in ("+", "*") else "")


def _default(action: argparse.Action) -> str:
    d = action.default
    if d is None or d is argparse.SUPPRESS or action.required:
        return "required" if action.required and action.option_strings else ""
    if action.nargs == 0:
        return "on" if d else "off"
    if isinstance(d, (list, tuple)) and not d:
        return ""
    return code(d)


def _help(action: argparse.Action) -> str:
    text = action.help if action.help not in (None, argparse.SUPPRESS) else ""
    if isinstance(action, argparse._AppendAction):
        text = (text + " (repeatable)").strip()
    return cell(text % {"default": action.default} if "%(default)" in text else text)


def render(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    out = ["## Commands", "", table(["command", "what it does"], [
        [f"[`{c.name}`](#{c.name.replace(' ', '-')})", cell(c.help)] for c in cmds[1:]]), ""]
    for c in cmds[1:]:
        depth = "##" if len(c.path) == 1 else "###"
        out += [f"{depth} {c.name}", "", cell(c.help), ""]
        usage = c.parser.format_usage().replace("usage: ", "").strip()
        out += ["```text", usage, "```", ""]
        args = c.arguments
        if args:
            out += [table(["argument", "value", "default", "help"],
                          [[f"`{flag_names(a)}`", _value(a), _default(a), _help(a)] for a in args]), ""]
        if c.children:
            out += ["Subcommands: " + ", ".join(f"[`{c.name} {k}`](#{(c.name + ' ' + k).replace(' ', '-')})"
                                                for k in c.children) + ".", ""]
    return "\n".join(out)
