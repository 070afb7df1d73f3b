FROM scratch
ENV X=1
RUN echo $X ${X}
CMD echo $X
ENTRYPOINT ["echo", "$X"]
