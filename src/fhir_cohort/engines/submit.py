"""The file to give ``spark-submit``: the command line, with absolute imports.

Rule: nothing here but the entry point (``spark-submit .../submit.py screen --engine
spark ...`` runs ``fhir-cohort screen --engine spark ...`` inside the submitted
driver, which picks up the master and settings spark-submit made).
"""

import sys

from fhir_cohort.cli import main

if __name__ == "__main__":
    sys.exit(main())
