"""Measuring retrieval: ranking metrics (`metrics`), ground truth (`ground_truth`), evaluating one collection
(`evaluate`), comparing models (`compare`) and the written report (`report`). Imports `search`, `store`,
`encoders` and `images`."""
