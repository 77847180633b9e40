#!/usr/bin/env python3
"""Run every command of docs/lab.md and compare its output with the lab's.

    lab.py LAB.md WORKDIR NAME=VALUE...

The lab's ```console blocks hold commands (lines starting with "$ ", a
trailing backslash continues a command on the next line, and a here-document
runs to its terminator) each followed by the output the learner will see.
In that output a line "..." stands for any number of lines, and "[..]"
within a line for any text. Every command must exit 0 (a lab command that
is expected to fail shows its status itself: `...; echo "exit $?"`).

The commands run in order in one bash process, as a learner types them in
one terminal, so variables, functions and background jobs carry over. The
first command sets the lab's variables (`P=lab- L=/tmp/lab ...`): each
NAME=VALUE given here replaces that assignment, so a test runs the lab with
its own namespace prefix and directory.

Prints one line per command: "OK <command>" or "NOTOK <command>: <why>".
"""

import os
import re
import subprocess
import sys


def blocks(text):
    """The commands of the ```console blocks, with their expected output."""
    out, inside, cur = [], False, None
    lines = iter(text.splitlines())
    for line in lines:
        if line.strip().startswith("```"):
            if not inside and line.strip() == "```console":
                inside = True
            elif inside:
                inside, cur = False, None
            continue
        if not inside:
            continue
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\"):
                cmd += "\n" + next(lines)
            here = re.search(r"<<-?\s*'?(\w+)'?", cmd)
            if here:
                end = here.group(1)
                for more in lines:
                    cmd += "\n" + more
                    if more == end:
                        break
            cur = {"cmd": cmd, "want": []}
            out.append(cur)
        elif cur is not None:
            cur["want"].append(line)
    return out


def matches(want, got):
    """Whether the lines `got` match the pattern lines `want`."""
    def line_re(w):
        return re.compile("^" + ".*".join(re.escape(p) for p in w.split("[..]")) + "$")

    pats = [None if w == "..." else line_re(w) for w in want]

    def m(i, j):
        if i == len(pats):
            return j == len(got)
        if pats[i] is None:
            return any(m(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and pats[i].match(got[j]) is not None and m(i + 1, j + 1)

    return m(0, 0)


def main():
    lab, work = sys.argv[1], sys.argv[2]
    sets = dict(a.split("=", 1) for a in sys.argv[3:])
    cmds = blocks(open(lab).read())
    if not cmds:
        print("NOTOK no ```console block with commands in " + lab)
        return
    first = cmds[0]["cmd"]
    for name, value in sets.items():
        first, n = re.subn(r"\b%s=[^\s;]+" % re.escape(name), "%s=%s" % (name, value), first)
        if n != 1:
            print("NOTOK the first command sets %s once: %s" % (name, cmds[0]["cmd"]))
            return
    cmds[0]["cmd"] = first
    os.makedirs(work, exist_ok=True)
    script = []
    for i, c in enumerate(cmds):
        script.append("{ %s\n} >%s/out.%d 2>&1 </dev/null; echo $? >%s/rc.%d" % (c["cmd"], work, i, work, i))
    with open(os.path.join(work, "lab.sh"), "w") as f:
        f.write("\n".join(script) + "\n")
    subprocess.run(["timeout", "600", "bash", os.path.join(work, "lab.sh")], check=False)
    for i, c in enumerate(cmds):
        shown = c["cmd"].split("\n")[0]
        try:
            rc = open("%s/rc.%d" % (work, i)).read().strip()
            got = open("%s/out.%d" % (work, i)).read().splitlines()
        except OSError:
            print("NOTOK %s: did not run" % shown)
            continue
        if rc != "0":
            print("NOTOK %s: exit %s; output: %s" % (shown, rc, " | ".join(got[-5:])))
        elif not matches(c["want"], got):
            print("NOTOK %s: output differs from the lab's:" % shown)
            for g in got[:40]:
                print("    | " + g)
        else:
            print("OK " + shown)


if __name__ == "__main__":
    main()
