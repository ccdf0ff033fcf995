"""The answering pipeline: from embeddings (and keypoints) to five ranked answers per photo.

Its modules, each importing only those listed before it:

- :mod:`~photoid.retrieval.search`: faiss search of the gallery, candidate individuals per query;
- :mod:`~photoid.retrieval.thresholds`: where ``new_individual`` goes among the answers;
- :mod:`~photoid.retrieval.evaluation`: the CV protocol, the test ranking, their scores (MAP@5, ...);
- :mod:`~photoid.retrieval.outputs`: predictions table, submission, plots' tables, copies answered;
- :mod:`~photoid.retrieval.catalogue`: LNBNN matching of keypoints over the whole catalogue;
- :mod:`~photoid.retrieval.verification`: local evidence per candidate (LNBNN, RANSAC inliers);
- :mod:`~photoid.retrieval.calibration`: the fusion into P(same individual) and P(new individual);
- :mod:`~photoid.retrieval.rerank`: a ranking re-ranked by the fused probability;
- :mod:`~photoid.retrieval.ranker`: the :class:`~photoid.retrieval.ranker.Ranker` knn-rank fits and
  saves, and pseudo-label and ``photoid identify`` answer with.
"""
