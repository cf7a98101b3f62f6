# acl.auth.php
# <?php exit()?>
*	@ALL	1
