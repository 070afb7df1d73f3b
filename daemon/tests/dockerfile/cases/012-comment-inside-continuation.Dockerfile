FROM scratch
RUN echo hello \
# comment
world
