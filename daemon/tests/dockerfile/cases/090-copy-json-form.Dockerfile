FROM scratch
ENV SRC=x.tar
COPY ["my file.txt", "other file", "/dest dir/"]
ADD ["$SRC", "/d"]
