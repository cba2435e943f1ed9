#!/usr/bin/env python3
"""Writes the negative .drv vectors in this directory, each a small edit of V14
(../3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv). Run from this directory."""
import os

v14 = open("../3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv", "rb").read()
OUT = b"/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple"


def edit(old, new):
    assert old in v14, old
    return v14.replace(old, new, 1)


cases = {
    "truncated": v14[:-10],
    "empty": b"",
    "not-derive": b"Derivx" + v14[6:],
    "unterminated-string": b'Derive([("out',
    "bad-escape-at-end": v14[: v14.rindex(b'"x86_64-linux"') + 13] + b"\\",
    "needless-escape": edit(b'"/bin/sh",["-c"', b'"/bin/\\sh",["-c"'),
    "raw-newline-in-arg": edit(b"echo hello", b"echo\nhello"),
    "backslash-in-system": edit(b'"x86_64-linux","/bin/sh",[', b'"x86_64\\-linux","/bin/sh",['),
    "relative-output-path": edit(b'"' + OUT + b'","",""', b'"' + OUT[1:] + b'","",""'),
    "output-outside-store": edit(b'"' + OUT + b'","",""', b'"/gnu/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple","",""'),
    "bad-hash-part": edit(b'"' + OUT + b'","",""', b'"/nix/store/e4f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple","",""'),
    "output-tuple-three-fields": edit(b'"' + OUT + b'","","")', b'"' + OUT + b'","")'),
    "output-hash-without-algo": edit(b'"' + OUT + b'","","")', b'"' + OUT + b'","","abc")'),
    "floating-with-path": edit(b'"' + OUT + b'","","")', b'"' + OUT + b'","r:sha256","")'),
    "bad-hash-algo": edit(b'"' + OUT + b'","","")', b'"' + OUT + b'","sha257","00")'),
    "fixed-hash-uppercase": edit(b'"' + OUT + b'","","")', b'"' + OUT + b'","sha256","5891B5B522D5DF086D0FF0B110FBD9D21BB4FC7163AF34D08286A2E846F6BE03")'),
    "fixed-hash-wrong-length": edit(b'"' + OUT + b'","","")', b'"' + OUT + b'","sha256","5891b5")'),
    "unsorted-env": edit(b'("builder","/bin/sh"),("name","simple")', b'("name","simple"),("builder","/bin/sh")'),
    "duplicate-env": edit(b'("name","simple")', b'("name","simple"),("name","simple")'),
    "duplicate-output": edit(b'[("out","' + OUT + b'","","")]', b'[("out","' + OUT + b'","",""),("out","' + OUT + b'","","")]'),
    "missing-comma": edit(b'["-c","echo', b'["-c""echo'),
    "leading-comma": edit(b'["-c","echo', b'[,"-c","echo'),
    "trailing-newline": v14 + b"\n",
    "non-utf8-output-name": edit(b'[("out","', b'[("o\xffut","'),
    "too-many-outputs": b"Derive(["
    + b",".join(b'("o%05d","","","")' % i for i in range(1025))
    + b"],[],[],\"x\",\"/bin/sh\",[],[])",
}

for name, data in cases.items():
    with open(name + ".drv", "wb") as f:
        f.write(data)
