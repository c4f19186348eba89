"""Name the packages whose installed version (`pip freeze` on stdin) differs from the lock file given."""

import re
import sys


def versions(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;+]+)", line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        locked = versions(handle.readlines())
    installed = versions(sys.stdin.readlines())
    differ = sorted(n for n in locked.keys() | installed.keys() if locked.get(n) != installed.get(n))
    for name in differ:
        print(f"{name}: locked {locked.get(name, '-')}, installed {installed.get(name, '-')}")
    print(f"{len(differ)} packages differ from {sys.argv[1]}" if differ else f"every version is {sys.argv[1]}'s")


if __name__ == "__main__":
    main()
