"""The composition root: the one place that knows every feature.

`features` lists what the platform is made of (inference API, admin, agents,
fine-tuning, deployments, sandboxes), each as its routes and its lifespan service;
`app.create_app` includes their routes in one order and enters their services with
an `AsyncExitStack`, so that they stop in the reverse of the order they started.
`schema` registers every feature's ORM models, for migrations and the tests that
compare them.

Imported by the CLI only; no feature imports this package. Import its modules
directly: this one stays light."""
