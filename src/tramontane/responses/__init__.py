"""OpenAI's Responses API over the served chat models: responses stored per
workspace and chained by `previous_response_id`, function tools, structured
output, typed stream events, background responses.

Import-light, like `agents`: `tramontane.store` imports `responses.models` so
that the store's metadata knows its table. Import `responses.api` and
`responses.service` directly.
"""
