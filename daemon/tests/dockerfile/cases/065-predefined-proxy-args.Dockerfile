FROM ubuntu
RUN echo "Hello World"
ENV X=${HTTP_PROXY}
