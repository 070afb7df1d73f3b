FROM scratch
SHELL ["/bin/bash", "-c"]
RUN echo hi
