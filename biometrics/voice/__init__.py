"""The voice core: audio front end, quality gates, the verified ECAPA-TDNN model, embeddings, templates, cohorts."""
