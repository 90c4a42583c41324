"""`python -m omni_grpo.config`: print the Markdown configuration reference (docs/config_reference.md)."""

import sys

from omni_grpo.config.reference import reference_markdown


def main() -> int:
    sys.stdout.write(reference_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
