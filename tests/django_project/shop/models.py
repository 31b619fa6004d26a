# the test writes the models of each stage here (tests/test_django_backend.py)
