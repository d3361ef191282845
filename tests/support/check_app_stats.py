"""Check stats JSON written by the app's Java code (jvm_test.sh's JUnit run) the way the harness reads it.

Each file goes through device_tests.runners.load_stats (schema check; an error object is raised as
RunFailed, which is what app_error*.json must do). Usage: python check_app_stats.py FILE...
Prints one line per file; exits 1 on the first that does not pass.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from device_tests.errors import RunFailed  # noqa: E402
from device_tests.runners import load_stats  # noqa: E402


def main(paths: list[str]) -> int:
    for p in map(Path, paths):
        want_error = p.name.startswith("app_error")
        try:
            data = load_stats(p.read_text(), "app")
        except RunFailed as exc:
            if not want_error:
                print(f"check_app_stats: {p.name}: {exc}")
                return 1
            print(f"check_app_stats: {p.name}: error object ok ({exc})")
            continue
        except Exception as exc:  # noqa: BLE001 - any other failure is a schema/JSON problem, reported
            print(f"check_app_stats: {p.name}: {exc}")
            return 1
        if want_error:
            print(f"check_app_stats: {p.name}: expected an error object")
            return 1
        print(f"check_app_stats: {p.name}: ok ({data['generated_tokens']} tokens, {len(data)} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
