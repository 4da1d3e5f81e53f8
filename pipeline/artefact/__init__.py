"""The model artefact: the estimator with its lineage and structure check, the product-code
encoding train and serve share, and artefact signing."""
