        # this is a comment-line
    FROM scratch
RUN echo hello
  run echo world
