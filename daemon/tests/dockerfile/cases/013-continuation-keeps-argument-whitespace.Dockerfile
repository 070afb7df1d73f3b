FROM scratch
RUN echo "\
     hello\
     world"
