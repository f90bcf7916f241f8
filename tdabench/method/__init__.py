"""The adapter contract: :class:`~tdabench.method.base.Method`, the base class every method
adapter subclasses, what the harness hands it (:class:`FitContext`, :class:`Compute`), and the
shared machinery adapters build on (text views, pooling, the inner-product core, gradients)."""

from tdabench.method.base import (  # noqa: F401  (the contract's public names)
    FAMILIES,
    FitContext,
    Method,
    MissingDependency,
    Trained,
    held_bytes,
    make_config,
    require,
)
from tdabench.method.text import (  # noqa: F401
    FIELDS,
    TEXTS,
    TextField,
    TextView,
    check_field,
    check_text,
    example_text,
    field_texts,
    text_view,
)
