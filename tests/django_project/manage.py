"""manage.py of the test project (tests/test_django_backend.py copies this directory)."""

import sys

from django.core.management import execute_from_command_line

if __name__ == "__main__":
    execute_from_command_line(sys.argv)
