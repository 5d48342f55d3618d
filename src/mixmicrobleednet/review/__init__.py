"""The review workspace (#33): raters accept, reject or mark unsure each detection of a case, add
microbleeds the model missed, and the decisions are kept as data beside the tool's outputs.

- `decisions`: a rater's review file (OUTPUT/reviews/<case>/<rater>.json), its checks (stale when the
  mask changed), the values a review gives a case (`reviewed_values`) and the reviewed mask;
- `agreement`: Cohen's kappa per detection and the ICC of the counts between raters;
- `app`: the local web app (`mixmicrobleednet review OUTPUT`), NiiVue bundled under static/;
- `export`: a self-contained HTML page per case (`review --export`).

This module imports nothing, so that records.py can read reviews without the web app's packages.
"""
