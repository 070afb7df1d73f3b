FROM scratch
RUN ["echo", "hello world"]
CMD ["executable","param1","param2"]
ENTRYPOINT [ "/bin/bash", "-c", "echo hello" ]
