"""The tiers keep their names true: tests/conftest.py fails an unmarked test that starts a process."""
import pytest

from tests.utils import REPO

pytest_plugins = ['pytester']

PROBES = '''
import subprocess
import sys

import pytest


def test_unmarked_python():
    subprocess.run([sys.executable, '-c', 'pass'], check=True)


def test_unmarked_shell():
    subprocess.run('bash -c true', shell=True, check=True)


@pytest.mark.slow
def test_slow_python():
    subprocess.run([sys.executable, '-c', 'pass'], check=True)


@pytest.mark.install
def test_install_shell():
    subprocess.run(['bash', '-c', 'true'], check=True)


def test_unmarked_helper():
    subprocess.run(['git', '--version'], check=True, capture_output=True)
'''


@pytest.mark.slow  # the probes start processes, and pytester runs them in a fresh pytest process
def test_unmarked_tests_that_start_processes_fail_by_name(pytester):
    pytester.makeconftest((REPO / 'tests' / 'conftest.py').read_text())
    pytester.makeini((REPO / 'pytest.ini').read_text())
    pytester.makepyfile(test_probes=PROBES)
    result = pytester.runpytest_subprocess('-p', 'no:cacheprovider', '-p', 'no:xdist')
    result.assert_outcomes(passed=3, failed=2)
    for name, command in [('test_unmarked_python', '-c pass'), ('test_unmarked_shell', 'bash -c true')]:
        result.stdout.fnmatch_lines([f'*test_probes.py::{name} starts a process (*{command}*): mark it '
                                     f'@pytest.mark.slow (or install, for the installer), or call the code '
                                     f'in-process.*'])
