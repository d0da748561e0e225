"""The inference API's HTTP routes (chat, completions, FIM, embeddings, models,
probes, a replica's sleep control) and the HTTP edge every feature shares: the
exception handlers and the request-context and body-size middleware. What the
routes run lives in `tramontane.inference`; `tramontane.platform` assembles the app."""
