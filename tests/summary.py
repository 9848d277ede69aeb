"""Turn pytest's closing line into the plain 'pytest: N passed, N failed, N skipped' line CI reads."""
import re, sys

def counts(line):
    "Numbers of passed/failed/skipped/error tests in pytest's summary `line`."
    found = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", line))
    return {k: found.get(k, 0) for k in ("passed", "failed", "skipped")}, found.get("error", 0) + found.get("errors", 0)

if __name__ == "__main__":
    lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
    c, err = counts(lines[-1] if lines else "")
    print(f"pytest: {c['passed']} passed, {c['failed'] + err} failed, {c['skipped']} skipped")
