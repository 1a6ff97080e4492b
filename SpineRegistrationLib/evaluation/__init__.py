"""The evaluation harness: simulated cases with exact truth (:mod:`.cases`), the methods scored on
them (:mod:`.methods`), scoring (:mod:`.scoring`) and the report (:mod:`.report`).

Nothing else in the library imports this package: it sits on top, beside the CLI.
"""

from .cases import EvalCase, EvalConfig, default_vertebrae, iter_cases, make_cases
from .methods import FACTORIES, Method, auto_method, cmaes_method, intensity_method, learned_method, make_method
from .report import RESULTS_FORMAT, RESULTS_VERSION, format_table, plot_report, write_report
from .scoring import SUCCESS_MM, iter_run_method, run_method, summarize, summarize_by_method
