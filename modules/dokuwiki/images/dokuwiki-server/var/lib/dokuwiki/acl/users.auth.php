# users.auth.php
# <?php exit()?>
# No account until configure-module creates the administrator.
