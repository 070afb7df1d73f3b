FROM scratch
ENV NAME=world
LABEL a="hello $NAME" b='hello $NAME' c=hello\ $NAME
ENV MY_NAME="John Doe" MY_DOG=Rex\ The\ Dog MY_CAT=fluffy
