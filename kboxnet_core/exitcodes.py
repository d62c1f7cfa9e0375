"""Exit codes of the ``kboxnet`` command."""

import enum


class ExitCode(enum.IntEnum):
    """What ``kboxnet`` returns (``kboxnet run`` returns the command's own status instead)."""

    #: success
    OK = 0
    #: an unexpected error (see the log)
    FAILURE = 1
    #: bad command line or bad configuration file (the message names the key)
    USAGE = 2
    #: no usable backend, or the named backend is unavailable
    NO_BACKEND = 3
    #: every candidate backend failed on the guest link
    BACKEND_FAILED = 4
    #: the environment lacks something required (``kboxnet doctor`` found a failing check)
    ENVIRONMENT = 5
    #: stopped by SIGINT
    INTERRUPTED = 130
