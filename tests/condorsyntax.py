"""HTCondor's new ``arguments`` / ``environment`` syntax read back as HTCondor reads it (the
manual's rules, written out independently of ``thesis_mlflow.grid.quoting``): the whole string
in double quotes, a literal double quote doubled; blanks separate words; a word with blanks or
single quotes in single quotes, a literal single quote doubled inside them."""

from __future__ import annotations


def words(text: str) -> list[str]:
    text = text.strip()
    assert text.startswith('"') and text.endswith('"') and len(text) >= 2, f"not the new syntax: {text!r}"
    body = text[1:-1]
    # a lone double quote inside would end the string early: only doubled ones are allowed
    assert body.replace('""', "").count('"') == 0, f"an undoubled double quote in {text!r}"
    body = body.replace('""', '"')
    out: list[str] = []
    cur: list[str] | None = None
    i, quoted = 0, False
    while i < len(body):
        ch = body[i]
        if quoted:
            if ch == "'" and body[i + 1:i + 2] == "'":
                cur.append("'")
                i += 2
                continue
            if ch == "'":
                quoted = False
            else:
                cur.append(ch)
        elif ch in " \t":
            if cur is not None:
                out.append("".join(cur))
                cur = None
        elif ch == "'":
            quoted, cur = True, cur if cur is not None else []
        else:
            cur = (cur or []) + [ch]
        i += 1
    assert not quoted, f"an unclosed single quote in {text!r}"
    if cur is not None:
        out.append("".join(cur))
    return out


def environment(text: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words(text))
