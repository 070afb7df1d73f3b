FROM scratch AS base
FROM base AS dev
FROM BASE
