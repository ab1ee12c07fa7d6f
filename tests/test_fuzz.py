"""Fuzzing the fact loader: thousands of hostile files made in-process from valid ones.

Each file is a mutation of a valid CSV, JSON or JSONL file (truncated, random bytes, deep nesting,
huge numbers, surrogates, BOMs, NULs, CR/LF mixes, duplicate headers, huge fields, many identical
rows...), written to a temporary file and loaded with load_facts. What must hold:
- nothing but FactsError escapes, and no file takes more than HANG_S;
- every message names the file, and every error about the content names a line or a record;
- the time is linear: no file costs more than MS_PER_KB, and ten times the identical rows cost
  less than twenty times the time.
Seeded, so a failure names a file that the same seed makes again.
"""
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from beacon.data.facts import FactsError, load_facts

FILES = 3000  # mutated files; with the special files and the big ones the test takes ~10 s
SEED = 12
HANG_S = 2.0  # a file that takes longer counts as a hang
# The slowest file per KB must stay under this; files under 4 KB count as 4 KB. The densest file, 2,000
# facts of 4 bytes (8 KB), costs ~40 µs a fact here, 10 ms/KB; a quadratic step costs 100 times that.
MS_PER_KB = 10.0

# Messages about the file as a whole, which have no line to name; every other message must name one.
WHOLE_FILE = re.compile(r"file not found|is a folder|not a regular file|cannot read the file|unknown extension"
                        r"|the file is (empty|UTF-16|over the limit|[\d.,]+ (MB|bytes), over)|no facts found"
                        r"|[\d,]+ facts, over the limit")
PLACE = re.compile(r", (line|record|row) \d+")


# ---------------------------------------------------------------- valid seeds

def seeds(rng: random.Random) -> dict[str, list[str]]:
    words = ["Zentrix", "Vellmora", "Drusk", "Marta Ilves", "Onward", "capital", "CEO", "1987", "é", "日本", "🙂"]
    def w():
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
    rows = [{"id": f"a{i}", "subject": w(), "relation": w(), "prompt": f"The {w()} of {w()} is", "target": w(),
             "paraphrases": [f"{w()} is", f"Who {w()}?"], "note": w(), "score": rng.random()} for i in range(8)]
    csv_text = "id,subject,relation,prompt,target,paraphrases,note\n" + "".join(
        f'{r["id"]},{r["subject"]},{r["relation"]},"{r["prompt"]}",{r["target"]},{"|".join(r["paraphrases"])},{r["note"]}\n'
        for r in rows)
    qa = "question,answer\n" + "".join(f"Who leads {w()}?,{w()}\n" for _ in range(5))
    tpl = [{"prompt": "{} is the CEO of", "subject": w(), "target": w(), "paraphrases": ["The boss of {} is"]}
           for _ in range(4)]
    cf = [{"case_id": i, "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": w(),
                                               "target_new": {"str": w(), "id": "Q1"}, "relation_id": "P103"},
           "paraphrase_prompts": ["{} spoke"], "neighborhood_prompts": ["x"]} for i in range(4)]
    return {"csv": [csv_text, qa, "prompt,subject,target\nThe capital of {} is,Halvessa,Corvanne\n"],
            "json": [json.dumps(rows, ensure_ascii=False), json.dumps({"facts": tpl}), json.dumps(cf, indent=2)],
            "jsonl": ["".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                      "".join(json.dumps(r) + "\r\n" for r in tpl)]}


# ---------------------------------------------------------------- mutations (each: rng, bytes -> bytes)

def _at(rng, data):
    return rng.randint(0, len(data))


def truncate(rng, d):
    return d[:_at(rng, d)]


def random_bytes(rng, d):
    i = _at(rng, d)
    return d[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + d[i:]


def flip_bytes(rng, d):
    b = bytearray(d)
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def delete_range(rng, d):
    i = _at(rng, d)
    return d[:i] + d[i + rng.randint(1, 64):]


def duplicate_range(rng, d):
    i, j = sorted((_at(rng, d), _at(rng, d)))
    return d[:j] + d[i:j] * rng.randint(2, 20) + d[j:]


def special_chars(rng, d):
    pieces = [b'"', b",", b"\n", b"\r", b"{", b"}", b"[", b"]", b":", b"|", b"{}", b"\\", b"'", b"=", b"\t", b"\x00"]
    i = _at(rng, d)
    return d[:i] + b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) + d[i:]


def deep_nesting(rng, d):
    depth = rng.choice([33, 100, 990, 5000, 100_000])
    opener = rng.choice([b"[", b'{"a":', b'[{"m":'])
    i = _at(rng, d)
    nest = opener * depth + (b"1" + (b"]" if opener == b"[" else b"}") * depth if rng.random() < 0.5 else b"")
    return d[:i] + nest + d[i:] if rng.random() < 0.5 else nest


def huge_number(rng, d):
    digits = b"-" * rng.randint(0, 1) + b"9" * rng.choice([4300, 4301, 6000, 50_000])
    text = d.decode("utf-8", "replace")
    for key in ("target", "prompt", "score", "case_id"):  # replace a value with the number, or drop it in anywhere
        if f'"{key}": ' in text and rng.random() < 0.7:
            return re.sub(f'"{key}": ("[^"]*"|[0-9.]+)', lambda m: f'"{key}": {digits.decode()}', text, count=1).encode()
    i = _at(rng, d)
    return d[:i] + digits + d[i:]


def surrogates(rng, d):
    spell = rng.choice([b"\\ud800", b"\\udfff", b"\\udc00\\ud800", b"\xed\xa0\x80", b"\\ud83d"])
    text = d
    if b'": "' in d and rng.random() < 0.7:
        i = d.index(b'": "') + 4
        return d[:i] + spell + d[i:]
    i = _at(rng, text)
    return text[:i] + spell + text[i:]


def boms(rng, d):
    bom = rng.choice([b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])
    if rng.random() < 0.3:
        return bom + d.decode("utf-8", "replace").encode(rng.choice(["utf-16-le", "utf-16-be"]))
    i = 0 if rng.random() < 0.6 else _at(rng, d)
    return d[:i] + bom + d[i:]


def nuls(rng, d):
    b = bytearray(d)
    for _ in range(rng.randint(1, 10)):
        b.insert(rng.randint(0, len(b)), 0)
    return bytes(b)


def line_ends(rng, d):
    mode = rng.choice(["cr", "crlf", "mixed", "lfcr"])
    if mode == "cr":
        return d.replace(b"\n", b"\r")
    if mode == "crlf":
        return d.replace(b"\n", b"\r\n")
    if mode == "lfcr":
        return d.replace(b"\n", b"\n\r")
    return re.sub(b"\n", lambda m: rng.choice([b"\r", b"\r\n", b"\n", b"\n\n", b"\r\r"]), d)


def duplicate_header(rng, d):
    lines = d.split(b"\n")
    head = lines[0].split(b",")
    if head:
        head.insert(rng.randint(0, len(head)), rng.choice(head))
    return b"\n".join([b",".join(head), *lines[1:]])


def huge_field(rng, d):
    size = rng.choice([1000, 131_073, 300_000, 2_000_000])
    filler = rng.choice([b"x", b"{}", b"|", b"\xc3\xa9", b'"', b","])
    i = _at(rng, d)
    return d[:i] + filler * (size // len(filler)) + d[i:]


def identical_rows(rng, d):
    lines = [line for line in d.split(b"\n") if line.strip()]
    if len(lines) < 2:
        return d * 50
    return b"\n".join([lines[0]] + [lines[1]] * rng.choice([100, 2500, 10_000])) + b"\n"


def formula_cells(rng, d):
    return d.replace(b",", rng.choice([b",=", b",+", b",-", b",@", b",'=", b",\t"]), rng.randint(1, 20))


def templates(rng, d):
    return d.replace(b"is", b"{}" * rng.choice([1, 50, 1000]), rng.randint(1, 5))


def blank(rng, d):
    return rng.choice([b"", b" ", b"\n\n", b"\xef\xbb\xbf", b",,,\n,,\n", b"[]", b"{}", b"null", b'{"facts": []}'])


MUTATIONS = [truncate, random_bytes, flip_bytes, delete_range, duplicate_range, special_chars, deep_nesting,
             huge_number, surrogates, boms, nuls, line_ends, duplicate_header, huge_field, identical_rows,
             formula_cells, templates, blank]
BIG = {huge_field, identical_rows, deep_nesting, huge_number}  # rarer: each costs a big file


class Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise Hang()


def run_one(load, error_type, path: Path, stats: dict, name: str) -> None:
    """Load one file; record a crash, a hang, a bad message and the time per KB."""
    size = path.stat().st_size if path.is_file() else 0
    ms_per_kb = _load_once(load, error_type, path, stats, name, size)
    for _ in range(2):  # over the bound: timed again, best of three, so a pause of the machine is not counted
        if ms_per_kb <= MS_PER_KB:
            break
        ms_per_kb = min(ms_per_kb, _load_once(load, error_type, path, None, name, size))
    stats["files"] += 1
    if ms_per_kb > stats["slowest"][0]:
        stats["slowest"] = (ms_per_kb, name, size)


def _load_once(load, error_type, path, stats, name, size) -> float:
    stats = stats or {k: [] for k in ("unnamed", "no_place", "hangs", "crashes")}
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    t = time.perf_counter()
    try:
        load(path)
    except error_type as e:
        msg = str(e)
        if path.name not in msg:
            stats["unnamed"].append((name, msg[:200]))
        elif not WHOLE_FILE.search(msg) and not PLACE.search(msg):
            stats["no_place"].append((name, msg[:200]))
    except Hang:
        stats["hangs"].append(name)
    except Exception as e:  # noqa: BLE001 -- what this test is here to find
        stats["crashes"].append((name, f"{type(e).__name__}: {str(e)[:150]}"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return (time.perf_counter() - t) * 1000 / max(size / 1024, 4)


def special_files(tmp: Path) -> list[tuple[str, Path]]:
    """Paths that are not plain files: a FIFO, /dev/zero, a folder, a missing file, a NUL in the name."""
    out = []
    fifo = tmp / "fifo.csv"
    os.mkfifo(fifo)
    out.append(("fifo", fifo))
    if Path("/dev/zero").exists():
        (tmp / "zero.jsonl").symlink_to("/dev/zero")
        out.append(("dev-zero", tmp / "zero.jsonl"))
    (tmp / "folder.json").mkdir()
    out += [("folder", tmp / "folder.json"), ("missing", tmp / "missing.csv"), ("nul-name", tmp / "a\x00b.csv")]
    return out


def fuzz(load, error_type, tmp: Path, files: int = FILES, seed: int = SEED, special: bool = True) -> dict:
    rng = random.Random(seed)
    stats = {"files": 0, "crashes": [], "hangs": [], "unnamed": [], "no_place": [], "slowest": (0.0, "", 0)}
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        if special:
            for name, path in special_files(tmp):
                run_one(load, error_type, path, stats, name)
        base = seeds(rng)
        for n in range(files):
            fmt = rng.choice(list(base))
            data = rng.choice(base[fmt]).encode("utf-8")
            names = []
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                m = rng.choice(MUTATIONS)
                if m in BIG and rng.random() < 0.8:
                    m = rng.choice([mu for mu in MUTATIONS if mu not in BIG])
                data = m(rng, data)
                names.append(m.__name__)
            ext = fmt if rng.random() < 0.9 else rng.choice(["csv", "json", "jsonl"])  # content in the wrong format
            path = tmp / f"f{n}.{ext}"
            path.write_bytes(data)
            run_one(load, error_type, path, stats, f"{path.name} ({'+'.join(names)}, seed {seed})")
            path.unlink()
    finally:
        signal.signal(signal.SIGALRM, old)
    return stats


def summary(stats: dict) -> str:
    ms, name, size = stats["slowest"]
    return (f"files fuzzed {stats['files']}, crashes {len(stats['crashes'])}, hangs {len(stats['hangs'])}, "
            f"unnamed {len(stats['unnamed'])}, without a place {len(stats['no_place'])}; "
            f"slowest {ms:.3f} ms/KB ({name}, {size:,} bytes)")


def test_fuzzed_files_raise_only_facts_errors_that_name_the_place(tmp_path):
    stats = fuzz(load_facts, FactsError, tmp_path)
    report = summary(stats)
    print("\nfuzz:", report)
    assert not stats["crashes"], f"{report}\n" + "\n".join(map(str, stats["crashes"][:10]))
    assert not stats["hangs"], f"{report}\n" + "\n".join(stats["hangs"][:10])
    assert not stats["unnamed"], f"{report}\n" + "\n".join(map(str, stats["unnamed"][:10]))
    assert not stats["no_place"], f"{report}\n" + "\n".join(map(str, stats["no_place"][:10]))
    assert stats["slowest"][0] < MS_PER_KB, report


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_identical_rows_cost_linear_time(tmp_path, fmt):
    """Twice the rows must cost about twice the time (quadratic id generation cost 4x). Both sizes are big enough
    that fixed costs do not count; the collector is off while timing, as the heap an earlier test left
    behind makes its passes cost more than the loader's own work."""
    import gc

    row = ",A is,B\n" if fmt == "csv" else '{"prompt": "A is", "target": "B"}\n'
    head = "id,prompt,target\n" if fmt == "csv" else ""
    times = {}
    for n in (100_000, 200_000):
        path = tmp_path / f"same{n}.{fmt}"
        path.write_text(head + row * n)
        gc.collect()
        gc.disable()
        try:
            t = time.perf_counter()
            facts = load_facts(path, max_bytes=64 << 20, max_facts=n)
            times[n] = time.perf_counter() - t
        finally:
            gc.enable()
        assert len({f.id for f in facts}) == n
    ratio = times[200_000] / times[100_000]
    print(f"\n{fmt}: 100,000 identical rows {times[100_000]:.3f} s, 200,000 {times[200_000]:.3f} s (x{ratio:.1f})")
    assert ratio < 3 and times[200_000] < 20, times
