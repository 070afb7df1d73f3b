FROM scratch
ENV ONE TWO= THREE=world
ENV MY_VAR my-value
