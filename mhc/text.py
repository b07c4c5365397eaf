"""Names from the data written into files other programs read: class names and inputs in a
CSV a spreadsheet opens, in a Markdown model card a browser renders.

* :func:`spreadsheet_cell`: a cell a spreadsheet would run as a formula (``=``, ``+``, ``-``,
  ``@``, a tab or a carriage return first, and not a number) gets a leading apostrophe, as
  OWASP advises against CSV injection; numbers such as ``-1`` stay as they are.
* :func:`markdown_cell`: HTML special characters escaped and ``|`` (a table's column break)
  escaped, so a class name shows as text and never as markup.
"""

from __future__ import annotations

import html

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """``value`` as written to a CSV cell: text a spreadsheet would evaluate is prefixed with ``'``."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value  # a number, such as -1 or +0.5
    except ValueError:
        return "'" + value


def markdown_cell(text: object) -> str:
    """``text`` for a Markdown table cell or sentence: no HTML, no column break."""
    return html.escape(str(text), quote=False).replace("|", "\\|")
