FROM app
FROM alpine AS app
