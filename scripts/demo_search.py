"""The study of `perpo.studies.search` (`--help` says what it does); also `python -m perpo.studies.search`."""

from perpo.studies.search import main

if __name__ == "__main__":
    main()
