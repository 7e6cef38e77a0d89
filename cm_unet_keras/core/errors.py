"""Errors raised for bad input files.

Every error names the offending file and the problem, so that a user with a
folder of thousands of exports can find and fix the one that is broken.
"""


class InvalidInputError(ValueError):
    """An input file or folder cannot be used.

    Args:
        path: the file or folder at fault.
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
