FROM alpine
RUN echo "<<EOF" '<<EOF' \<<EOF
RUN ["<<EOF"]
