FROM scratch AS final
COPY --from=builder /out /out

FROM alpine AS builder
RUN make
