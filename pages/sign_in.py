"""Shown instead of every page while sign-in is configured and nobody is signed in."""

import streamlit as st

st.title("Coach Cache")
st.write("Sign in with your company account to generate programs and see the cache.")
st.button("Sign in", type="primary", on_click=st.login, icon=":material/login:")
