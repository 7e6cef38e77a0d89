"""Mask conventions: what a source's masks call vessel.

The public sources label different sets of pixels. CIMAT / DCA1 mark the
whole visible tree and the guiding catheter; XCAD the whole tree, the
catheter left as background; ARCADE's syntax task only the 25 SYNTAX main
segments, its visible side branches left unlabelled. One sigmoid asked to
follow all three learns none of them; a `CMUNet(conventions=...)` has one
output per convention instead, and each pair teaches every output what its
mask implies for it (`data.pipeline.implied_targets`).

As sets of vessel pixels of one angiogram the conventions nest:
syntax ⊆ tree ⊆ tree_catheter. `CONVENTIONS` lists them in that order,
narrowest first. Nothing here imports TensorFlow: the command line reads
these names to build its help.
"""

# Each convention's name and what its masks call vessel, narrowest first.
CONVENTIONS = {
    "syntax": "the 25 SYNTAX main segments only, visible side branches unlabelled (ARCADE syntax task)",
    "tree": "the whole visible coronary tree, the guiding catheter not labelled (XCAD)",
    "tree_catheter": "the whole visible coronary tree and the guiding catheter (CIMAT, DCA1)",
}
# The convention a multi-output model segments in unless told otherwise.
DEFAULT_CONVENTION = "tree"


def convention_rank(name):
    """Position of `name` in the nesting (0: the narrowest); refuses an unknown name."""
    check_convention(name)
    return list(CONVENTIONS).index(name)


def check_convention(name, choices=None, what="this model's conventions"):
    """`name` if it is a convention (and one of `choices`, when given).

    Raises:
        ValueError: one line naming the choices.
    """
    if name not in CONVENTIONS:
        raise ValueError(f"unknown convention {name!r}: choose one of {', '.join(CONVENTIONS)}")
    if choices is not None and name not in choices:
        raise ValueError(f"convention {name!r} is not one of {what} ({', '.join(choices) or 'none'})")
    return name


def check_conventions(names):
    """A model's conventions as a tuple: known names, each once, at least one."""
    names = tuple(names)
    if not names:
        raise ValueError(f"conventions: give at least one of {', '.join(CONVENTIONS)}")
    for name in names:
        check_convention(name)
    if len(set(names)) != len(names):
        raise ValueError(f"conventions {', '.join(names)}: each may appear once")
    return names
